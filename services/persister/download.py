"""Fetching an output from Skytells' CDN: only from allowed hosts, size-capped, typed by its own bytes.

SSRF guard: the URL must be http(s) on a host of `OUTPUT_ALLOWED_HOSTS`; the host is resolved and every
address it resolves to must be public unless the host (or that address) is listed explicitly, not through a
wildcard. The connection then goes to the address that was checked (`common.destinations`, which the
notifier's webhook posts share).
Redirects are followed by hand, each hop checked the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from common import destinations
from common.addresses import IpAddress, host_allowed, valid_hostname
from common.errors import DestinationRefused, OutputRejected, UpstreamUnavailable
from common.images import SNIFF_BYTES, sniff

CHUNK = 128 * 1024
MAX_REDIRECTS = 5


def check_url(url: str, allowed_hosts: Sequence[str]) -> httpx.URL:
    """The URL as httpx will request it; OutputRejected when it is not one we may, or can, fetch.

    An URL that cannot be parsed (a bad port, a broken IPv6 literal, an invalid host label) is as permanent a
    failure as a disallowed host: no retry can make it valid.
    """
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port  # `.port` raises on a port that is not a number in range
    except ValueError as exc:
        raise OutputRejected(f"output URL cannot be parsed ({exc}): {url[:200]}") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise OutputRejected(f"output URL is not http(s): {url[:200]}")
    if port == 0 or not valid_hostname(hostname):
        raise OutputRejected(f"output URL has an invalid host or port: {url[:200]}")
    if not host_allowed(hostname, allowed_hosts):
        raise OutputRejected(f"output host not allowed: {hostname}")
    try:
        target = httpx.URL(url)
        target.host  # noqa: B018 - decoded lazily: an invalid `xn--` label raises only here
        return target
    except (httpx.InvalidURL, ValueError) as exc:  # idna.IDNAError is a UnicodeError, hence a ValueError
        raise OutputRejected(f"output URL cannot be parsed ({exc}): {url[:200]}") from None


async def resolve_checked(host: str, port: int, allowed_hosts: Sequence[str]) -> IpAddress:
    """The address to connect to for `host`; OutputRejected when it is internal and not listed explicitly."""
    try:
        return await destinations.resolve_checked(host, port, allowed_hosts)
    except DestinationRefused as exc:
        raise OutputRejected(f"output {exc}") from None
    except UpstreamUnavailable as exc:
        raise UpstreamUnavailable(f"CDN {exc}") from None


async def _pinned_request(http: httpx.AsyncClient, url: str, allowed_hosts: Sequence[str]) -> httpx.Request:
    target = check_url(url, allowed_hosts)
    # identity: the stored object must be the bytes the CDN holds, not a compressed transfer of them.
    try:
        return await destinations.pinned_request(http, "GET", target, allowed_hosts, {"Accept-Encoding": "identity"})
    except DestinationRefused as exc:
        raise OutputRejected(f"output {exc}") from None
    except UpstreamUnavailable as exc:
        raise UpstreamUnavailable(f"CDN {exc}") from None


def redirect_target(current: str, location: str) -> str:
    """Where a redirect from `current` leads; OutputRejected when it cannot be parsed or leaves https."""
    try:
        target = urljoin(current, location)
    except ValueError as exc:
        raise OutputRejected(f"redirect to an URL that cannot be parsed ({exc})") from None
    if urlsplit(current).scheme == "https" and urlsplit(target).scheme != "https":
        raise OutputRejected("redirect from https to a plain-text URL refused")
    return target


@dataclass
class Output:
    extension: str
    content_type: str
    chunks: AsyncIterator[bytes]


async def _limited(head: bytes, rest: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    seen = len(head)
    if seen > max_bytes:
        raise OutputRejected(f"output larger than {max_bytes} bytes")
    yield head
    try:
        async for chunk in rest:
            seen += len(chunk)
            if seen > max_bytes:
                raise OutputRejected(f"output larger than {max_bytes} bytes")
            yield chunk
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"download interrupted: {exc.__class__.__name__}") from exc


@asynccontextmanager
async def open_output(
    http: httpx.AsyncClient, url: str, allowed_hosts: Sequence[str], max_bytes: int
) -> AsyncIterator[Output]:
    """Open `url` for streaming; redirects are followed only to allowed hosts."""
    for _ in range(MAX_REDIRECTS + 1):
        request = await _pinned_request(http, url, allowed_hosts)
        try:
            response = await http.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"CDN unreachable: {exc.__class__.__name__}") from exc
        if response.is_redirect and "location" in response.headers:
            await response.aclose()
            url = redirect_target(url, response.headers["location"])
            continue
        break
    else:
        raise OutputRejected("too many redirects")
    try:
        status = response.status_code
        if status in (408, 425, 429) or status >= 500:
            raise UpstreamUnavailable(f"CDN answered HTTP {status}")
        if status == 404 or status == 410:
            raise OutputRejected(f"output expired or missing at the CDN (HTTP {status})")
        if status >= 300:
            raise OutputRejected(f"CDN refused the output (HTTP {status})")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise OutputRejected(f"output larger than {max_bytes} bytes")
        stream = response.aiter_raw(CHUNK)
        head = b""
        try:
            async for chunk in stream:
                head += chunk
                if len(head) >= SNIFF_BYTES:
                    break
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"download interrupted: {exc.__class__.__name__}") from exc
        kind = sniff(head)
        if kind is None:
            raise OutputRejected("output is not a PNG, JPEG, WebP or GIF image")
        yield Output(kind[0], kind[1], _limited(head, stream, max_bytes))
    finally:
        await response.aclose()
