"""The signing keys of an identity provider, read from its JWKS document (`AUTH_JWKS_URL`).

Keys are fetched with the process's async HTTP client, never with PyJWT's `PyJWKClient`, whose urllib call would
block the event loop. They are cached; a token naming a key the cache lacks (the provider rotated its keys) causes
one fetch, and at most one a minute, however many such tokens arrive: a stranger inventing `kid`s cannot turn the
API into a flood of requests to the provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

logger = logging.getLogger(__name__)

# The asymmetric algorithms accepted, and the only curve ES256 is defined on (RFC 7518, 3.4).
ALGORITHMS = ("RS256", "ES256")
_CURVES = {"ES256": "P-256"}
REFETCH_AFTER_S = 60.0
# A provider that could not be read is tried again sooner: until it answers, no token of its can be checked.
RETRY_AFTER_FAILURE_S = 5.0


class JwksUnavailable(Exception):
    """The provider's keys could not be read and none are cached."""


def _usable_keys(document: Any) -> dict[tuple[str | None, str], jwt.PyJWK]:
    """(kid, algorithm) -> key, for the signing keys of the algorithms Studio accepts; the rest are skipped."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: dict[tuple[str | None, str], jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:  # a key type or algorithm PyJWT does not know: not one of ours
            continue
        algorithm = key.algorithm_name
        if algorithm not in ALGORITHMS or entry.get("crv", _CURVES.get(algorithm)) != _CURVES.get(algorithm):
            continue
        kid = entry.get("kid")
        keys[(kid if isinstance(kid, str) else None, algorithm)] = key
    return keys


class Jwks:
    def __init__(self, url: str, http: httpx.AsyncClient, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self._http = http
        self._clock = clock
        self._keys: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._next_fetch = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0  # how many times the document was requested (read by the tests)

    def _find(self, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get((kid, algorithm))
        # A token without `kid` is usable only when the provider has a single key for its algorithm.
        candidates = [key for (_, alg), key in self._keys.items() if alg == algorithm]
        return candidates[0] if len(candidates) == 1 else None

    async def key(self, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        """The key a token names, fetching the document when it is not cached and a fetch is due; None when the
        provider has no such key. JwksUnavailable when nothing is cached and the provider cannot be read."""
        found = self._find(kid, algorithm)
        if found is None and self._clock() >= self._next_fetch:
            async with self._lock:
                if self._clock() >= self._next_fetch:  # not already fetched by a request that held the lock
                    await self._fetch()
            found = self._find(kid, algorithm)
        if found is None and not self._keys:
            raise JwksUnavailable(f"no signing keys could be read from {self.url}")
        return found

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            response = await self._http.get(self.url, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = _usable_keys(response.json())
        except (httpx.HTTPError, ValueError) as exc:  # JSONDecodeError is a ValueError
            self._next_fetch = self._clock() + RETRY_AFTER_FAILURE_S
            logger.warning("could not read the identity provider's keys: %s", exc, extra={"jwks_url": self.url})
            return
        self._next_fetch = self._clock() + REFETCH_AFTER_S
        if not keys:
            logger.warning("the identity provider's JWKS has no RS256/ES256 signing key", extra={"jwks_url": self.url})
        self._keys = keys
