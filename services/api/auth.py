"""Bearer JWTs: who is calling, or a 401.

Accepted: HS256 signed with `AUTH_JWT_SECRET`, and, with `AUTH_JWKS_URL`, RS256 and ES256 signed by one of the
identity provider's keys (`services/api/jwks.py`). The algorithm a token names picks the kind of key before
anything is verified: an HS256 token is checked against the shared secret only, never against a public key (the
"algorithm confusion" forgery, where a public key is used as an HMAC secret), and `none` or any other algorithm
is refused outright. `sub` (a non-empty string of at most 255 bytes that PostgreSQL can store) and `exp` are
required; `aud` and `iss` too when `AUTH_JWT_AUDIENCE` / `AUTH_JWT_ISSUER` are set.

A token once verified is remembered (`VerifiedTokens`) until its `exp`: a client sends the same token with each
request, and checking it anew (two base64 and JSON decodes, the signature, the claims) would dominate the
cost of a cheap read such as `GET /api/predictions/{id}`. Only the verdict "valid, for this subject, by this
key" is kept, and a token by an identity provider's key is accepted from memory only while that very key is
still the one the provider serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web

from common.db.text import storable
from common.errors import ApiError, JwksUnavailable
from common.settings import Settings
from common.web import read_header
from services.api.jwks import ALGORITHMS, Jwks

logger = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
# aiohttp's own limit on one header line; a longer Authorization never reaches us.
MAX_AUTHORIZATION = 8190
# Verified tokens remembered per process, and the longest one worth remembering: together they bound the memory
# (4,096 x 2 KiB at most), and ordinary tokens are a few hundred bytes.
REMEMBERED_TOKENS = 4096
MAX_REMEMBERED_TOKEN = 2048
# A user id is a key of several indexes; one far longer than any provider's ids could exceed PostgreSQL's index
# row limit and turn every request of its bearer into a database error.
MAX_SUBJECT_BYTES = 255


def _refused(message: str) -> ApiError:
    return ApiError(401, message, _CHALLENGE)


@dataclass(frozen=True, slots=True)
class Verified:
    """What a valid token proved: its subject until `expires` (its `exp`), checked by `key` (an `algorithm` key
    named `kid`)."""

    subject: str
    expires: int
    algorithm: str
    kid: Any
    key: Any


class VerifiedTokens:
    """Tokens verified recently, by their exact text; the oldest is forgotten first once `size` are held."""

    def __init__(self, size: int = REMEMBERED_TOKENS) -> None:
        self.size = size
        self._tokens: dict[str, Verified] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, token: str) -> Verified | None:
        return self._tokens.get(token)

    def add(self, token: str, verified: Verified) -> None:
        if len(token) > MAX_REMEMBERED_TOKEN:
            return
        if len(self._tokens) >= self.size:
            del self._tokens[next(iter(self._tokens))]
        self._tokens[token] = verified

    def forget(self, token: str) -> None:
        self._tokens.pop(token, None)

    def forget_keys(self, keys: set[Any]) -> None:
        """Drop every token a withdrawn key vouched for."""
        for token in [token for token, verified in self._tokens.items() if verified.key in keys]:
            del self._tokens[token]


class Authenticator:
    def __init__(self, settings: Settings, jwks: Jwks | None = None, clock: Callable[[], float] = time.time) -> None:
        self._secret = settings.auth_jwt_secret
        self._jwks = jwks
        self._clock = clock
        self.verified = VerifiedTokens()
        if jwks is not None:
            jwks.on_withdrawn(self.verified.forget_keys)
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
        return await self.subject(token)

    async def subject(self, token: str) -> str:
        """The subject of a valid token, or ApiError 401 (503 while the provider's keys cannot be read)."""
        known = self.verified.get(token)
        if known is not None:
            # The same checks, in the same order, as for a new token, but for the signature and claims' shapes:
            # the key must still be the one the provider serves, then the token must not have expired since.
            if await self._key(known.algorithm, known.kid) is known.key:
                if known.expires <= self._clock():  # as PyJWT compares `exp`
                    self.verified.forget(token)
                    raise _refused("Token expired")
                return known.subject
            self.verified.forget(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("Invalid token") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise _refused("Invalid token")
        kid = header.get("kid")
        key = await self._key(algorithm, kid)
        claims = self._verify(token, key, algorithm)
        subject = claims.get("sub")
        if (
            not isinstance(subject, str)
            or not subject.strip()
            or not storable(subject)  # first: a lone surrogate has no UTF-8 length to measure
            or len(subject.encode()) > MAX_SUBJECT_BYTES
        ):
            raise _refused("Invalid token")
        self.verified.add(token, Verified(subject, int(claims["exp"]), algorithm, kid, key))
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
            raise
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
