"""The signing keys of an identity provider, read from its JWKS document (`AUTH_JWKS_URL`).

Keys are fetched with the process's async HTTP client, never with PyJWT's `PyJWKClient`, whose urllib call would
block the event loop. They are cached; a token naming a key the cache lacks (the provider rotated its keys) causes
one fetch, and at most one a minute, however many such tokens arrive: a stranger inventing `kid`s cannot turn the
API into a flood of requests to the provider.

The cache is also read again at least every `AUTH_JWKS_REFRESH_S`, sooner when the provider's
`Cache-Control: max-age` says so: a key the provider withdrew (leaked, rotated out) stops verifying tokens by then,
and the listeners told of it (the remembered tokens) drop what it vouched for at once. A key that stays published
keeps its very object across reads, so what was verified with it stays valid. While the provider cannot be read,
the keys last read stay in use: nothing says they were withdrawn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from common.errors import JwksUnavailable

logger = logging.getLogger(__name__)

# The asymmetric algorithms accepted, and the only curve ES256 is defined on (RFC 7518, 3.4).
ALGORITHMS = ("RS256", "ES256")
_CURVES = {"ES256": "P-256"}
REFETCH_AFTER_S = 60.0
# A provider that could not be read is tried again sooner: until it answers, no token of its can be checked.
RETRY_AFTER_FAILURE_S = 5.0
# The shortest time a read is trusted, whatever `max-age` says: a `max-age=0` must not mean a read per request.
MIN_REFRESH_S = 5.0
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)

Keys = dict[tuple[str | None, str], jwt.PyJWK]


def max_age(cache_control: str | None) -> float | None:
    """The `max-age` of a Cache-Control header, in seconds; None without one (or with `no-store`/`no-cache`,
    which mean the same as 0 here)."""
    if not cache_control:
        return None
    if re.search(r"(?:^|,)\s*no-(?:store|cache)\s*(?:,|$)", cache_control, re.IGNORECASE):
        return 0.0
    found = _MAX_AGE.search(cache_control)
    return float(found.group(1)) if found else None


def _usable_keys(document: Any, known: dict[str, jwt.PyJWK]) -> tuple[Keys, dict[str, jwt.PyJWK]]:
    """(kid, algorithm) -> key, for the signing keys of the algorithms Studio accepts (the rest are skipped), and
    the keys by their published text. A key published unchanged keeps its object from `known`."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: Keys = {}
    published: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        text = json.dumps(entry, sort_keys=True)
        try:
            key = known.get(text) or jwt.PyJWK(entry)
        except jwt.PyJWTError:  # a key type or algorithm PyJWT does not know: not one of ours
            continue
        algorithm = key.algorithm_name
        if algorithm not in ALGORITHMS or entry.get("crv", _CURVES.get(algorithm)) != _CURVES.get(algorithm):
            continue
        kid = entry.get("kid")
        keys[(kid if isinstance(kid, str) else None, algorithm)] = key
        published[text] = key
    return keys, published


class Jwks:
    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
        refresh_s: float = 600.0,
    ) -> None:
        self.url = url
        self._http = http
        self._clock = clock
        self._refresh_s = refresh_s
        self._keys: Keys = {}
        self._published: dict[str, jwt.PyJWK] = {}
        self._next_fetch = float("-inf")  # the soonest a key the cache lacks may cause a read
        self._stale_at = float("-inf")  # when the keys held must be read again before they are used
        self._lock = asyncio.Lock()
        self._withdrawn: list[Callable[[set[jwt.PyJWK]], None]] = []
        self.fetches = 0  # how many times the document was requested (read by the tests)

    def on_withdrawn(self, listener: Callable[[set[jwt.PyJWK]], None]) -> None:
        """Call `listener` with the keys a read found withdrawn."""
        self._withdrawn.append(listener)

    def _find(self, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get((kid, algorithm))
        # A token without `kid` is usable only when the provider has a single key for its algorithm.
        candidates = [key for (_, alg), key in self._keys.items() if alg == algorithm]
        return candidates[0] if len(candidates) == 1 else None

    async def key(self, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        """The key a token names, reading the document first when the keys held are stale, or when the key is not
        cached and a read is due; None when the provider has no such key. JwksUnavailable when nothing is cached
        and the provider cannot be read."""
        if self._clock() >= self._stale_at:
            await self._refresh(lambda: self._clock() >= self._stale_at)
        found = self._find(kid, algorithm)
        if found is None and self._clock() >= self._next_fetch:
            await self._refresh(lambda: self._clock() >= self._next_fetch)
            found = self._find(kid, algorithm)
        if found is None and not self._keys:
            raise JwksUnavailable(f"no signing keys could be read from {self.url}")
        return found

    async def _refresh(self, still_due: Callable[[], bool]) -> None:
        async with self._lock:
            if still_due():  # not already read by a request that held the lock
                await self._fetch()

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            response = await self._http.get(self.url, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys, published = _usable_keys(response.json(), self._published)
        except (httpx.HTTPError, ValueError) as exc:  # JSONDecodeError is a ValueError
            now = self._clock()
            self._next_fetch = self._stale_at = now + RETRY_AFTER_FAILURE_S
            logger.warning("could not read the identity provider's keys: %s", exc, extra={"jwks_url": self.url})
            return
        now = self._clock()
        self._next_fetch = now + REFETCH_AFTER_S
        age = max_age(response.headers.get("Cache-Control"))
        fresh_for = self._refresh_s if age is None else min(self._refresh_s, age)
        self._stale_at = now + max(MIN_REFRESH_S, fresh_for)
        if not keys:
            logger.warning("the identity provider's JWKS has no RS256/ES256 signing key", extra={"jwks_url": self.url})
        withdrawn = set(self._published.values()) - set(published.values())
        self._keys, self._published = keys, published
        if withdrawn:
            logger.warning("the identity provider withdrew %d key(s)", len(withdrawn), extra={"jwks_url": self.url})
            for listener in self._withdrawn:
                listener(withdrawn)
