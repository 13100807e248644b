"""The JWKS cache, with a clock the test moves: rotation, the one-a-minute rule, the provider's max-age,
failures, concurrency, and the verified tokens it forgets when their key is withdrawn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest

from common.errors import ApiError, JwksUnavailable
from services.api.auth import Authenticator
from services.api.jwks import Jwks, max_age
from tests.jwks_kit import AUDIENCE, EC_KEY, ISSUER, ROTATED_KEY, RSA_KEY, Provider, jwk, serving, signed_token


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[tuple[Provider, str]]:
    async with serving() as served:
        yield served


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

        idp.keys.append(jwk(ROTATED_KEY, "rsa-2"))
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
    token = signed_token(RSA_KEY, "RS256", "rsa-1")
    published = list(idp.keys)
    async with httpx.AsyncClient() as client:
        auth = Authenticator(configured, Jwks(url, client, clock))
        subject = await auth.subject(token)
        assert await auth.subject(token) == subject and len(auth.verified) == 1
        idp.keys[:] = [jwk(ROTATED_KEY, "rsa-2")]
        try:
            clock.now += 61
            await auth.subject(signed_token(ROTATED_KEY, "RS256", "rsa-2"))  # the keys are read again: rsa-1 is gone
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
    leaked, kept = signed_token(RSA_KEY, "RS256", "rsa-1"), signed_token(EC_KEY, "ES256", "ec-1")
    published = list(idp.keys)
    async with httpx.AsyncClient() as client:
        jwks = Jwks(url, client, clock, refresh_s=600)
        auth = Authenticator(configured, jwks)
        await auth.subject(leaked), await auth.subject(kept)
        kept_key = await jwks.key("ec-1", "ES256")
        assert len(auth.verified) == 2 and jwks.fetches == 1
        idp.keys[:] = [jwk(EC_KEY, "ec-1")]  # the provider withdraws the leaked key
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
