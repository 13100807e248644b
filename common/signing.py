"""HMAC-SHA256 over the raw callback body, as Skytells computes it: lowercase hex in `x-skytells-signature`;
and the tag that makes a generation reference in a callback URL Studio's own."""

from __future__ import annotations

import base64
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
    """HMAC-SHA256 (RFC 2104) from the key's two padded hash states, computed once per key: half the cost of
    `hmac.digest`, which sets up OpenSSL's HMAC for the key on every call."""
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


# Domain separation: a reference tag can never be replayed as a body signature, nor the other way round.
_REFERENCE = b"studio-generation-reference:"


def tag_reference(generation_id: str, secret: str) -> str:
    """`{generation_id}.{tag}`: the reference a callback URL carries. The body's signature does not cover the URL,
    so without the tag a captured signed body could be replayed with another generation's id."""
    mac = hmac.digest(secret.encode(), _REFERENCE + generation_id.encode(), "sha256")[:16]
    return f"{generation_id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def untag_reference(reference: str, secrets: Iterable[str]) -> str | None:
    """The generation id of a reference tagged under any of `secrets` (rotation); None for any other."""
    generation_id, dot, _ = reference.rpartition(".")
    if not dot:
        return None
    matched = False
    for secret in secrets:  # every key, as in `verify`
        matched |= hmac.compare_digest(tag_reference(generation_id, secret), reference)
    return generation_id if matched else None
