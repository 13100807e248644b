"""Development bearer tokens: what the local stack prints for its demo user and what tests sign in with.

In production an identity provider issues tokens (see the README's security section); Studio only verifies them.
"""

from __future__ import annotations

import time

import jwt


def issue_token(secret: str, user_id: str, ttl_s: int = 86400) -> str:
    """An HS256 token for `user_id`, valid `ttl_s` seconds."""
    return jwt.encode({"sub": user_id, "exp": int(time.time()) + ttl_s}, secret, algorithm="HS256")
