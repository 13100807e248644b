"""HMAC-SHA256 over the raw callback body, as Skytells computes it: lowercase hex in `x-skytells-signature`."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable

SIGNATURE_HEADER = "x-skytells-signature"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_BLOCK = 64  # SHA-256's block size, in bytes
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


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
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(_digest(secret, body), given)
    return matched


def _digest(secret: str, body: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) from the key's two padded hash states, computed once per key, where
    `hmac.digest` sets up OpenSSL's HMAC for the key again on every call."""
    inner, outer = _keyed(secret)
    inner = inner.copy()
    inner.update(body)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()


@functools.lru_cache(maxsize=16)  # the configured secrets: one or two, more while rotating
def _keyed(secret: str) -> tuple[hashlib._Hash, hashlib._Hash]:
    key = secret.encode()
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))
