"""Fetching an output from Skytells' CDN: only from allowed hosts, size-capped, typed by its own bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from common.errors import OutputRejected, UpstreamUnavailable

CHUNK = 64 * 1024
MAX_REDIRECTS = 5

# (magic test, extension, content type); WebP is RIFF....WEBP.
_KINDS: tuple[tuple[str, str, str], ...] = (
    ("png", "png", "image/png"),
    ("jpeg", "jpg", "image/jpeg"),
    ("webp", "webp", "image/webp"),
    ("gif", "gif", "image/gif"),
)


def sniff(head: bytes) -> tuple[str, str] | None:
    """(extension, content type) from an image's first bytes, or None when it is none of ours."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg", "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp", "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif", "image/gif"
    return None


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def check_url(url: str, allowed_hosts: Sequence[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutputRejected(f"output URL is not http(s): {url[:200]}")
    if not host_allowed(parts.hostname, allowed_hosts):
        raise OutputRejected(f"output host not allowed: {parts.hostname}")


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
        check_url(url, allowed_hosts)
        try:
            response = await http.send(http.build_request("GET", url), stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"CDN unreachable: {exc.__class__.__name__}") from exc
        if response.is_redirect and "location" in response.headers:
            await response.aclose()
            url = urljoin(url, response.headers["location"])
            continue
        break
    else:
        raise OutputRejected("too many redirects")
    try:
        status = response.status_code
        if status == 429 or status >= 500:
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
                if len(head) >= 16:
                    break
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"download interrupted: {exc.__class__.__name__}") from exc
        kind = sniff(head)
        if kind is None:
            raise OutputRejected("output is not a PNG, JPEG, WebP or GIF image")
        yield Output(kind[0], kind[1], _limited(head, stream, max_bytes))
    finally:
        await response.aclose()
