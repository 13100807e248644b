"""Tokens from an identity provider: RS256 and ES256 signed by keys of its JWKS (`AUTH_JWKS_URL`), `aud` and `iss`
required when configured, HS256 with the shared secret still accepted, and nothing else.

The provider (`jwks_kit.py`) is a local aiohttp app serving a JWKS of keys it makes; it counts how often it is read.
The cache itself, with a clock the test moves, is tested in `test_jwks_cache.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from devstack.processes import free_port
from tests.helpers import JWT_SECRET
from tests.jwks_kit import (
    AUDIENCE,
    EC_KEY,
    ISSUER,
    RSA_KEY,
    STRANGER_EC_KEY,
    Provider,
    jwk,
    serving,
    signed_token,
    token_claims,
)


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[tuple[Provider, str]]:
    async with serving() as served:
        yield served


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


def _forged_hs256(secret: bytes, kid: str) -> str:
    """HS256 over the header and claims with `secret` as the HMAC key, built by hand: PyJWT refuses to sign with
    a public key, which is exactly what an attacker holding only the published key would do."""

    def part(data: dict[str, Any]) -> str:
        return jwt.utils.base64url_encode(json.dumps(data).encode()).decode()

    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{part(token_claims())}"
    signature = jwt.utils.base64url_encode(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature.decode()}"


async def _status(http: httpx.AsyncClient, api: str, token: str) -> int:
    response = await http.get(f"{api}/api/generations", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (200, 401), response.text
    return response.status_code


async def test_rs256_es256_and_hs256_tokens_are_accepted(http, api):
    for token in (
        signed_token(RSA_KEY, "RS256", "rsa-1"),
        signed_token(EC_KEY, "ES256", "ec-1"),
        signed_token(JWT_SECRET, "HS256", None),
    ):
        assert await _status(http, api, token) == 200, jwt.get_unverified_header(token)


PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
REFUSED = {
    "wrong audience": lambda: signed_token(RSA_KEY, "RS256", "rsa-1", aud="another-api"),
    "no audience": lambda: signed_token(RSA_KEY, "RS256", "rsa-1", aud=None),
    "wrong issuer": lambda: signed_token(EC_KEY, "ES256", "ec-1", iss="https://evil.example/"),
    "no issuer": lambda: signed_token(JWT_SECRET, "HS256", None, iss=None),
    "HS256 keyed with the public key's PEM": lambda: _forged_hs256(PUBLIC_PEM, "rsa-1"),
    "HS256 keyed with the public JWK": lambda: _forged_hs256(json.dumps(jwk(RSA_KEY, "rsa-1")).encode(), "rsa-1"),
    "RS512 by a published key": lambda: signed_token(RSA_KEY, "RS512", "rsa-1"),
    "ES256 by an unpublished key under a published kid": lambda: signed_token(STRANGER_EC_KEY, "ES256", "ec-1"),
    "RS256 under the EC key's kid": lambda: signed_token(RSA_KEY, "RS256", "ec-1"),
    "alg none": lambda: jwt.encode(token_claims(), None, algorithm="none"),
    "expired": lambda: signed_token(RSA_KEY, "RS256", "rsa-1", exp=int(time.time()) - 60),
    "no sub": lambda: signed_token(RSA_KEY, "RS256", "rsa-1", sub=None),
}


async def test_every_other_token_is_a_401(http, api):
    for case, make in REFUSED.items():
        assert await _status(http, api, make()) == 401, case


async def test_unknown_kids_cost_the_provider_at_most_one_read_a_minute(http, api, provider):
    idp, _ = provider
    assert await _status(http, api, signed_token(RSA_KEY, "RS256", "rsa-1")) == 200  # keys cached by now
    before = idp.reads
    for _ in range(30):
        assert await _status(http, api, signed_token(RSA_KEY, "RS256", f"invented-{uuid.uuid4().hex}")) == 401
    assert idp.reads - before <= 1


# The cache itself, with a clock the test moves: rotation, the one-a-minute rule, failures, concurrency.


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
        waiting = asyncio.create_task(_status(http, api, signed_token(RSA_KEY, "RS256", "rsa-1", aud=None, iss=None)))
        await asyncio.sleep(0.5)  # the API is now waiting for the provider
        assert (await http.get(f"{api}/healthz")).status_code == 200
        assert not waiting.done()
        assert await waiting == 200
    finally:
        idp.delay = 0.0
        await asyncio.to_thread(process.stop)
