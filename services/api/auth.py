"""Bearer JWTs: who is calling, or a 401.

Accepted: HS256 signed with `AUTH_JWT_SECRET`, and, with `AUTH_JWKS_URL`, RS256 and ES256 signed by one of the
identity provider's keys (`services/api/jwks.py`). The algorithm a token names picks the kind of key before
anything is verified: an HS256 token is checked against the shared secret only, never against a public key (the
"algorithm confusion" forgery, where a public key is used as an HMAC secret), and `none` or any other algorithm
is refused outright. `sub` (a non-empty string PostgreSQL can store) and `exp` are required; `aud` and `iss` too
when `AUTH_JWT_AUDIENCE` / `AUTH_JWT_ISSUER` are set.
"""

from __future__ import annotations

import logging
from typing import Any

import jwt
from aiohttp import web

from common.db.text import storable
from common.settings import Settings
from common.web import ApiError, read_header
from services.api.jwks import ALGORITHMS, Jwks, JwksUnavailable

logger = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
# aiohttp's own limit on one header line; a longer Authorization never reaches us.
MAX_AUTHORIZATION = 8190


def _refused(message: str) -> ApiError:
    return ApiError(401, message, _CHALLENGE)


class Authenticator:
    def __init__(self, settings: Settings, jwks: Jwks | None = None) -> None:
        self._secret = settings.auth_jwt_secret
        self._jwks = jwks
        self._audience = settings.auth_jwt_audience or None
        self._issuer = settings.auth_jwt_issuer or None
        self._required = ["exp", "sub"] + (["aud"] if self._audience else []) + (["iss"] if self._issuer else [])
        self.algorithms = (("HS256",) if self._secret else ()) + (ALGORITHMS if jwks is not None else ())

    async def user_id(self, request: web.Request) -> str:
        """The caller's user id, or ApiError 401 (503 while the identity provider's keys cannot be read)."""
        authorization = read_header(
            request, "Authorization", max_length=MAX_AUTHORIZATION, status=401, headers=_CHALLENGE
        )
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _refused("Missing bearer token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("Invalid token") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise _refused("Invalid token")
        claims = self._verify(token, await self._key(algorithm, header.get("kid")), algorithm)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip() or not storable(subject):
            raise _refused("Invalid token")
        return subject

    async def _key(self, algorithm: str, kid: Any) -> Any:
        """The key that may verify a token of `algorithm`: the kind of key follows from the algorithm alone."""
        if algorithm == "HS256":
            return self._secret
        if self._jwks is None or (kid is not None and not isinstance(kid, str)):
            raise _refused("Invalid token")
        try:
            key = await self._jwks.key(kid, algorithm)
        except JwksUnavailable as exc:
            logger.warning("token not checked: %s", exc)
            raise ApiError(503, "Cannot check the token right now; retry later", {"Retry-After": "5"}) from None
        if key is None:
            raise _refused("Invalid token")
        return key

    def _verify(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": self._required},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("Token expired") from None
        except jwt.PyJWTError:
            raise _refused("Invalid token") from None
        return claims
