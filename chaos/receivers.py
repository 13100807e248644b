"""The soak's webhook receivers: one aiohttp server in the soak's process, a path per kind of receiver and user.

Each kind misbehaves in its own way on the first attempts at each delivery, then accepts it; `gone` answers 410
to everything during a window of the soak (a receiver taken down for a while), 200 outside it. Every request is
kept, with the answer it got, for the balance.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from devstack.processes import free_port


class Kind(StrEnum):
    OK = "ok"
    FLAKY = "flaky"  # 500 to the first two attempts
    THROTTLE = "throttle"  # 429 with Retry-After: 1 to the first attempt
    SLOW = "slow"  # the first attempt gets no answer before the notifier's deadline
    RESET = "reset"  # the first attempt's connection is cut
    GONE = "gone"  # 410 while the window is open


@dataclass(frozen=True)
class Received:
    kind: Kind
    user: str
    delivery_id: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived
    answered: int | None  # the status it got; None when cut or left without an answer
    verified: bool  # its signature verified, by the `standardwebhooks` package, under its user's key


class Receivers:
    def __init__(self, timeout_s: float) -> None:
        self.port = free_port()
        self.timeout_s = timeout_s
        self.received: list[Received] = []
        self.attempts: Counter[str] = Counter()
        self.gone_window = (float("inf"), float("inf"))
        self.keys: dict[str, Webhook] = {}  # user -> their key, as `GET /api/webhooks/secret` gave it
        self._runner: web.AppRunner | None = None

    def url(self, kind: Kind, user: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{user}"

    def gone_between(self, start: float, end: float) -> None:
        """Open the 410 window of `gone` receivers, in time.monotonic() seconds."""
        self.gone_window = (start, end)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{kind}/{user}", self._receive)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        kind, user = Kind(request.match_info["kind"]), request.match_info["user"]
        body = await request.read()
        delivery_id = request.headers.get("webhook-id", "")
        self.attempts[delivery_id] += 1
        attempt = self.attempts[delivery_id]
        status: int | None = 200
        headers: dict[str, str] = {}
        now = time.monotonic()
        if kind is Kind.FLAKY and attempt <= 2:
            status = 500
        elif kind is Kind.THROTTLE and attempt == 1:
            status, headers = 429, {"Retry-After": "1"}
        elif kind is Kind.GONE and self.gone_window[0] <= now < self.gone_window[1]:
            status = 410
        elif kind in (Kind.SLOW, Kind.RESET) and attempt == 1:
            status = None
        verified = False
        if user in self.keys:
            try:
                self.keys[user].verify(body, dict(request.headers))
                verified = True
            except WebhookVerificationError:
                pass
        self.received.append(Received(kind, user, delivery_id, dict(request.headers), body, now, status, verified))
        if status is None:
            if kind is Kind.SLOW:
                await asyncio.sleep(self.timeout_s + 1)  # the notifier gave up meanwhile
            elif request.transport is not None:
                request.transport.abort()
            return web.Response(status=204)
        return web.Response(status=status, headers=headers)
