"""Bearer JWTs: HS256 only (`none` and every other algorithm refused), `sub` and `exp` required."""

from __future__ import annotations

import jwt
from aiohttp import web

from common.web import ApiError


def authenticate(request: web.Request, secret: str) -> str:
    """The caller's user id, or ApiError 401."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "Missing bearer token", {"WWW-Authenticate": "Bearer"})
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "Token expired", {"WWW-Authenticate": "Bearer"}) from None
    except jwt.PyJWTError:
        raise ApiError(401, "Invalid token", {"WWW-Authenticate": "Bearer"}) from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise ApiError(401, "Invalid token", {"WWW-Authenticate": "Bearer"})
    return subject
