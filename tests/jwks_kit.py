"""An identity provider for the JWKS tests: keys this module makes, a local aiohttp app serving their JWKS
and counting how often it is read, and tokens signed by them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.helpers import listening

AUDIENCE, ISSUER = "studio-api", "https://idp.example.test/"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ROTATED_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


class Provider:
    """The identity provider's JWKS endpoint: which keys it publishes, how often it was read, how slow it is."""

    def __init__(self) -> None:
        self.keys = [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1")]
        self.reads = 0
        self.delay = 0.0
        self.status = 200
        self.cache_control: str | None = None

    async def jwks(self, _: web.Request) -> web.Response:
        self.reads += 1
        await asyncio.sleep(self.delay)
        headers = {"Cache-Control": self.cache_control} if self.cache_control else None
        return web.json_response({"keys": self.keys}, status=self.status, headers=headers)


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Provider, str]]:
    """A provider listening on loopback, and the URL of its JWKS."""
    idp = Provider()
    app = web.Application()
    app.router.add_get("/jwks.json", idp.jwks)
    async with listening(app) as url:
        yield idp, f"{url}/jwks.json"


def token_claims(**overrides: Any) -> dict[str, Any]:
    claims = {"sub": f"idp-{uuid.uuid4().hex[:10]}", "exp": int(time.time()) + 600, "aud": AUDIENCE, "iss": ISSUER}
    return {k: v for k, v in {**claims, **overrides}.items() if v is not None}


def signed_token(key: Any, alg: str, kid: str | None, **claims: Any) -> str:
    return jwt.encode(token_claims(**claims), key, algorithm=alg, headers={"kid": kid} if kid else None)
