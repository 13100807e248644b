"""A webhook receiver in the test process: a real aiohttp server on a loopback port that records every request
and answers each path as a test scripts it (a status, headers, a delay, or held until the test lets it go), 200 once
the script is used up."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

from devstack.processes import free_port
from tests.helpers import listening


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hold: asyncio.Event | None = None  # answered once it is set: the attempt stays in flight until the test says


@dataclass(frozen=True)
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def verified(self, key: str) -> dict[str, Any]:
        """The body as the `standardwebhooks` package verifies it under `key` (raises when it does not)."""
        payload: dict[str, Any] = Webhook(key).verify(self.body, self.headers)
        return payload


class Receiver:
    def __init__(self, host: str) -> None:
        self.host = host
        self.port = free_port()
        self.calls: list[Call] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.scripts: dict[str, list[Reply] | Callable[[Call], Reply]] = {}

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}/{path}"

    def script(self, path: str, replies: list[Reply] | Callable[[Call], Reply]) -> None:
        self.scripts[path] = replies

    def to(self, path: str) -> list[Call]:
        return [call for call in self.calls if call.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        call = Call(request.match_info["path"], dict(request.headers), await request.read(), time.monotonic())
        self.calls.append(call)
        script = self.scripts.get(call.path)
        if callable(script):
            reply = script(call)
        elif script:
            reply = script.pop(0)
        else:
            reply = Reply()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            if reply.hold is not None:
                await reply.hold.wait()
            return web.Response(status=reply.status, headers=reply.headers)
        finally:
            self.in_flight -= 1


@asynccontextmanager
async def receiving(host: str = "127.0.0.1") -> AsyncIterator[Receiver]:
    receiver = Receiver(host)
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", receiver._handle)
    async with listening(app, host, receiver.port, access_log=None, shutdown_timeout=0.5):
        yield receiver
