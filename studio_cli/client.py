"""Talking to Studio's API for the command: one httpx client, refusals turned into sentences, live events.

Environment: `STUDIO_API_URL` (default `http://127.0.0.1:8080`) and `STUDIO_TOKEN` (a bearer token).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from studio_cli.sse import read_events

DEFAULT_API_URL = "http://127.0.0.1:8080"
RECONNECT_PAUSE_S = 1.0
RECONNECTS = 30
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class Refused(Exception):
    """The API (or the network) said no; the message is a sentence for a person."""


def _sentence(response: httpx.Response) -> str:
    try:
        said = response.json().get("error")
    except (ValueError, AttributeError):
        said = None
    said = str(said or response.reason_phrase or "no reason given").rstrip(".")
    status = response.status_code
    if status == 401:
        return f"The API did not accept your token ({said}). Set STUDIO_TOKEN to a valid bearer token."
    if status == 404:
        return "No generation of yours has that id."
    if status == 429:
        return f"{said}: you already have as many generations in progress as allowed. Wait for one to finish."
    if status == 503:
        wait = response.headers.get("Retry-After")
        return f"The service is busy ({said}). Try again{f' in {wait} s' if wait else ' shortly'}."
    return f"The API refused the request ({status}): {said}."


class Api:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30, read=None),  # a stream may stay quiet between keep-alives
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Api:
        token = environ.get("STUDIO_TOKEN", "").strip()
        if not token:
            raise Refused("Set STUDIO_TOKEN to your bearer token (make run prints one).")
        return cls(environ.get("STUDIO_API_URL", DEFAULT_API_URL), token)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Refused(f"Could not reach the API at {self.base_url}: {exc or exc.__class__.__name__}.") from None
        if response.status_code >= 400:
            raise Refused(_sentence(response))
        if response.status_code == 204:  # done, nothing to say (a deletion)
            return None
        return response.json()

    async def events(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """The generations of an event stream, reconnecting (with Last-Event-ID) when it drops, until it ends."""
        last_id: str | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                async with self.http.stream("GET", path, headers=headers) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise Refused(_sentence(response))
                    async for event in read_events(response):
                        failures = 0
                        last_id = event.id or last_id
                        yield event.json()
                return  # the server closed the stream: it had nothing more to say
            except httpx.HTTPError as exc:
                failures += 1
                if failures > RECONNECTS:
                    raise Refused(f"Lost the connection to the API at {self.base_url}: {exc}.") from None
                await asyncio.sleep(RECONNECT_PAUSE_S)

    async def save(self, url: str, target: Path) -> Path:
        """Download an output to `target` (its extension completed from the image's type when it has none)."""
        try:
            async with httpx.AsyncClient(timeout=60) as anonymous, anonymous.stream("GET", url) as response:
                if response.status_code != 200:
                    raise Refused(f"Could not download the image ({response.status_code}) from {url}.")
                if not target.suffix:
                    kind = response.headers.get("Content-Type", "").split(";")[0].strip()
                    target = target.with_suffix("." + _EXTENSIONS.get(kind, extension_of(url)))
                with target.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise Refused(f"Could not download the image from {url}: {exc}.") from None
        return target


def extension_of(url: str) -> str:
    suffix = Path(urlsplit(url).path).suffix.lstrip(".")
    return suffix or "png"
