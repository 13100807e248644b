"""Tokens from an identity provider: RS256 and ES256 signed by keys of its JWKS (`AUTH_JWKS_URL`), `aud` and `iss`
required when configured, HS256 with the shared secret still accepted, and nothing else.

The provider is a local aiohttp app serving a JWKS of keys this module makes; it counts how often it is read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from common.errors import ApiError, JwksUnavailable
from devstack.processes import free_port
from services.api.auth import Authenticator
from services.api.jwks import Jwks, max_age
from tests.helpers import JWT_SECRET

AUDIENCE, ISSUER = "studio-api", "https://idp.example.test/"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ROTATED_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


class Provider:
    """The identity provider's JWKS endpoint: which keys it publishes, how often it was read, how slow it is."""

    def __init__(self) -> None:
        self.keys = [_jwk(RSA_KEY, "rsa-1"), _jwk(EC_KEY, "ec-1")]
        self.reads = 0
        self.delay = 0.0
        self.status = 200
        self.cache_control: str | None = None

    async def jwks(self, _: web.Request) -> web.Response:
        self.reads += 1
        await asyncio.sleep(self.delay)
        headers = {"Cache-Control": self.cache_control} if self.cache_control else None
        return web.json_response({"keys": self.keys}, status=self.status, headers=headers)


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[tuple[Provider, str]]:
    idp = Provider()
    app = web.Application()
    app.router.add_get("/jwks.json", idp.jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield idp, f"http://127.0.0.1:{port}/jwks.json"
    await runner.cleanup()


@pytest.fixture(scope="module")
def api(services, provider) -> Iterator[str]:
    port = free_port()
    env = {
        "API_PORT": str(port),
        "AUTH_JWKS_URL": provider[1],
        "AUTH_JWT_AUDIENCE": AUDIENCE,
        "AUTH_JWT_ISSUER": ISSUER,
    }
    process = services.start_service("api", env=env, label="api-jwks")
    yield f"http://127.0.0.1:{port}"
    process.stop()


def _claims(**overrides: Any) -> dict[str, Any]:
    claims = {"sub": f"idp-{uuid.uuid4().hex[:10]}", "exp": int(time.time()) + 600, "aud": AUDIENCE, "iss": ISSUER}
    return {k: v for k, v in {**claims, **overrides}.items() if v is not None}


def _token(key: Any, alg: str, kid: str | None, **claims: Any) -> str:
    return jwt.encode(_claims(**claims), key, algorithm=alg, headers={"kid": kid} if kid else None)


def _forged_hs256(secret: bytes, kid: str) -> str:
    """HS256 over the header and claims with `secret` as the HMAC key, built by hand: PyJWT refuses to sign with
    a public key, which is exactly what an attacker holding only the published key would do."""

    def part(data: dict[str, Any]) -> str:
        return jwt.utils.base64url_encode(json.dumps(data).encode()).decode()

    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{part(_claims())}"
    signature = jwt.utils.base64url_encode(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature.decode()}"


async def _status(http: httpx.AsyncClient, api: str, token: str) -> int:
    response = await http.get(f"{api}/api/generations", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (200, 401), response.text
    return response.status_code


async def test_rs256_es256_and_hs256_tokens_are_accepted(http, api):
    for token in (
        _token(RSA_KEY, "RS256", "rsa-1"),
        _token(EC_KEY, "ES256", "ec-1"),
        _token(JWT_SECRET, "HS256", None),
    ):
        assert await _status(http, api, token) == 200, jwt.get_unverified_header(token)


PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
REFUSED = {
    "wrong audience": lambda: _token(RSA_KEY, "RS256", "rsa-1", aud="another-api"),
    "no audience": lambda: _token(RSA_KEY, "RS256", "rsa-1", aud=None),
    "wrong issuer": lambda: _token(EC_KEY, "ES256", "ec-1", iss="https://evil.example/"),
    "no issuer": lambda: _token(JWT_SECRET, "HS256", None, iss=None),
    "HS256 keyed with the public key's PEM": lambda: _forged_hs256(PUBLIC_PEM, "rsa-1"),
    "HS256 keyed with the public JWK": lambda: _forged_hs256(json.dumps(_jwk(RSA_KEY, "rsa-1")).encode(), "rsa-1"),
    "RS512 by a published key": lambda: _token(RSA_KEY, "RS512", "rsa-1"),
    "ES256 by an unpublished key under a published kid": lambda: _token(STRANGER_EC_KEY, "ES256", "ec-1"),
    "RS256 under the EC key's kid": lambda: _token(RSA_KEY, "RS256", "ec-1"),
    "alg none": lambda: jwt.encode(_claims(), None, algorithm="none"),
    "expired": lambda: _token(RSA_KEY, "RS256", "rsa-1", exp=int(time.time()) - 60),
    "no sub": lambda: _token(RSA_KEY, "RS256", "rsa-1", sub=None),
}


async def test_every_other_token_is_a_401(http, api):
    for case, make in REFUSED.items():
        assert await _status(http, api, make()) == 401, case


async def test_unknown_kids_cost_the_provider_at_most_one_read_a_minute(http, api, provider):
    idp, _ = provider
    assert await _status(http, api, _token(RSA_KEY, "RS256", "rsa-1")) == 200  # keys cached by now
    before = idp.reads
    for _ in range(30):
        assert await _status(http, api, _token(RSA_KEY, "RS256", f"invented-{uuid.uuid4().hex}")) == 401
    assert idp.reads - before <= 1


# The cache itself, with a clock the test moves: rotation, the one-a-minute rule, failures, concurrency.


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_rotated_key_is_fetched_once_the_minute_is_over(provider):
    idp, url = provider
    clock = Clock()
    async with httpx.AsyncClient() as client:
        jwks = Jwks(url, client, clock)
        assert await jwks.key("rsa-1", "RS256") is not None
        assert await jwks.key("ec-1", "ES256") is not None and jwks.fetches == 1  # cached
        assert await jwks.key("rsa-1", "ES256") is None  # a key serves only its own algorithm

        idp.keys.append(_jwk(ROTATED_KEY, "rsa-2"))
        try:
            clock.now += 30
            assert await jwks.key("rsa-2", "RS256") is None and jwks.fetches == 1  # too soon to ask again
            clock.now += 31
            results = await asyncio.gather(*(jwks.key("rsa-2", "RS256") for _ in range(20)))
            assert all(key is not None for key in results) and jwks.fetches == 2  # one fetch for all twenty
        finally:
            idp.keys.pop()


async def test_a_remembered_token_is_refused_once_its_key_is_withdrawn(provider, settings):
    """Tokens verified once are answered from memory, but only while their key is still the provider's."""
    idp, url = provider
    clock = Clock()
    configured = replace(settings, auth_jwks_url=url, auth_jwt_audience=AUDIENCE, auth_jwt_issuer=ISSUER)
    token = _token(RSA_KEY, "RS256", "rsa-1")
    published = list(idp.keys)
    async with httpx.AsyncClient() as client:
        auth = Authenticator(configured, Jwks(url, client, clock))
        subject = await auth.subject(token)
        assert await auth.subject(token) == subject and len(auth.verified) == 1
        idp.keys[:] = [_jwk(ROTATED_KEY, "rsa-2")]
        try:
            clock.now += 61
            await auth.subject(_token(ROTATED_KEY, "RS256", "rsa-2"))  # the keys are read again: rsa-1 is gone
            with pytest.raises(ApiError) as refused:
                await auth.subject(token)
            assert refused.value.status == 401
        finally:
            idp.keys[:] = published


async def test_a_withdrawn_key_stops_working_within_the_refresh_time_and_its_tokens_are_dropped(provider, settings):
    """No token naming an unknown key is needed: the keys are read again at least every AUTH_JWKS_REFRESH_S."""
    idp, url = provider
    clock = Clock()
    configured = replace(settings, auth_jwks_url=url, auth_jwt_audience=AUDIENCE, auth_jwt_issuer=ISSUER)
    leaked, kept = _token(RSA_KEY, "RS256", "rsa-1"), _token(EC_KEY, "ES256", "ec-1")
    published = list(idp.keys)
    async with httpx.AsyncClient() as client:
        jwks = Jwks(url, client, clock, refresh_s=600)
        auth = Authenticator(configured, jwks)
        await auth.subject(leaked), await auth.subject(kept)
        kept_key = await jwks.key("ec-1", "ES256")
        assert len(auth.verified) == 2 and jwks.fetches == 1
        idp.keys[:] = [_jwk(EC_KEY, "ec-1")]  # the provider withdraws the leaked key
        try:
            clock.now += 599
            assert await auth.subject(leaked)  # not yet read again
            clock.now += 2
            assert await auth.subject(kept)  # this request reads the keys again ...
            assert jwks.fetches == 2 and len(auth.verified) == 1  # ... and the leaked key's token is forgotten
            assert await jwks.key("ec-1", "ES256") is kept_key  # a key still published stays the same key
            with pytest.raises(ApiError) as refused:
                await auth.subject(leaked)
            assert refused.value.status == 401
        finally:
            idp.keys[:] = published


async def test_a_shorter_max_age_from_the_provider_wins(provider):
    idp, url = provider
    clock = Clock()
    idp.cache_control = "public, max-age=30, must-revalidate"
    try:
        async with httpx.AsyncClient() as client:
            jwks = Jwks(url, client, clock, refresh_s=600)
            assert await jwks.key("rsa-1", "RS256") is not None and jwks.fetches == 1
            clock.now += 29
            assert await jwks.key("rsa-1", "RS256") is not None and jwks.fetches == 1
            clock.now += 2
            assert await jwks.key("rsa-1", "RS256") is not None and jwks.fetches == 2
            idp.cache_control = "max-age=3600"  # a longer one does not: AUTH_JWKS_REFRESH_S is the most
            clock.now += 31
            await jwks.key("rsa-1", "RS256")
            clock.now += 601
            await jwks.key("rsa-1", "RS256")
            assert jwks.fetches == 4
    finally:
        idp.cache_control = None


def test_max_age_is_read_from_cache_control():
    assert max_age(None) is None and max_age("public") is None
    assert max_age("public, max-age=300") == 300 and max_age('max-age="42"') == 42
    assert max_age("no-store") == 0 and max_age("private, no-cache") == 0
    assert max_age("s-maxage=10") is None


async def test_a_provider_that_cannot_be_read_is_retried_after_a_few_seconds(provider):
    idp, url = provider
    clock = Clock()
    idp.status = 503
    try:
        async with httpx.AsyncClient() as client:
            jwks = Jwks(url, client, clock)
            with pytest.raises(JwksUnavailable):
                await jwks.key("rsa-1", "RS256")
            with pytest.raises(JwksUnavailable):
                await jwks.key("rsa-1", "RS256")
            assert jwks.fetches == 1
            idp.status = 200
            clock.now += 6
            assert await jwks.key("rsa-1", "RS256") is not None and jwks.fetches == 2
    finally:
        idp.status = 200


async def test_a_slow_provider_does_not_stall_other_requests(services, provider, http):
    """The keys are fetched without blocking the event loop: while one request waits for them, others are served."""
    idp, url = provider
    port = free_port()
    process = await asyncio.to_thread(
        services.start_service, "api", {"API_PORT": str(port), "AUTH_JWKS_URL": url}, "api-slow-jwks"
    )
    idp.delay = 3.0
    try:
        api = f"http://127.0.0.1:{port}"
        waiting = asyncio.create_task(_status(http, api, _token(RSA_KEY, "RS256", "rsa-1", aud=None, iss=None)))
        await asyncio.sleep(0.5)  # the API is now waiting for the provider
        assert (await http.get(f"{api}/healthz")).status_code == 200
        assert not waiting.done()
        assert await waiting == 200
    finally:
        idp.delay = 0.0
        await asyncio.to_thread(process.stop)
