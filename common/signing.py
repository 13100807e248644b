"""HMAC-SHA256 over the raw callback body, as Skytells computes it: lowercase hex in `x-skytells-signature`."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

SIGNATURE_HEADER = "x-skytells-signature"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secrets: Iterable[str]) -> bool:
    """True when `header` is the signature of `body` under any one of `secrets` (key rotation)."""
    if not header:
        return False
    candidate = header.strip()
    if candidate[:7].lower() == "sha256=":
        candidate = candidate[7:]
    if len(candidate) != 64 or not set(candidate) <= _HEX_DIGITS:
        return False
    given = bytes.fromhex(candidate)
    # Check every key, not stopping at the first match, so timing says nothing about which key matched.
    # `hmac.digest` is the one-shot C path: a fraction of the cost of building an `hmac.new` object.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(hmac.digest(secret.encode(), body, "sha256"), given)
    return matched
