"""What tests share: one way to wait for something observable (bounded), one Prometheus reader, a service's
log, and the session's secrets with the one way to sign a callback and to make a bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import asyncpg
import httpx
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from common.predictions import TERMINAL
from common.signing import SIGNATURE_HEADER, sign
from devstack.environment import SIM_DEFAULTS
from devstack.processes import free_port
from devstack.tokens import issue_token

# The session's AUTH_JWT_SECRET (tests/conftest.py gives it to the stack).
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123"
# The session's SKYTELLS_WEBHOOK_SECRET: the simulator's, which the stack passes on to the gateway.
WEBHOOK_SECRET = SIM_DEFAULTS["SIM_WEBHOOK_SECRET"]


def bearer(user_id: str, secret: str = JWT_SECRET) -> dict[str, str]:
    """The Authorization header of a valid token for `user_id`."""
    return {"Authorization": f"Bearer {issue_token(secret, user_id)}"}


def signed_callback(payload: Any, secret: str = WEBHOOK_SECRET) -> tuple[bytes, dict[str, str]]:
    """A callback's body (JSON of `payload`, or `payload` itself when bytes) and the headers Skytells signs it with."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return body, {SIGNATURE_HEADER: sign(body, secret), "content-type": "application/json"}


async def eventually(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Call `check` (sync or async) until it returns something truthy, and return that; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def listening(
    app: web.Application, host: str = "127.0.0.1", port: int | None = None, **runner_options: Any
) -> AsyncIterator[str]:
    """`app` served on `host` (on `port`, or a free one) until the block ends: its base URL."""
    port = port or free_port()
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def scratch_database(database_url: str) -> AsyncIterator[str]:
    """A database of its own on the session's server, empty, dropped afterwards (its users gone or not): its URL."""
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        try:
            yield database_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


async def wait_for_status(
    http: httpx.AsyncClient,
    api: str,
    generation_id: str,
    headers: dict[str, str],
    timeout: float = 30.0,
    statuses: Collection[str] = TERMINAL,
) -> dict[str, Any]:
    """The generation as the API shows it, once its status is one of `statuses`."""
    seen: dict[str, Any] = {}

    async def reached() -> dict[str, Any] | None:
        response = await http.get(f"{api}/api/predictions/{generation_id}", headers=headers)
        assert response.status_code == 200, response.text
        seen.update(response.json())
        return seen if seen["status"] in statuses else None

    try:
        result: dict[str, Any] = await eventually(
            f"generation {generation_id} to reach {sorted(statuses)}", reached, timeout
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from None
    return result


def samples(text: str, name: str) -> list[Sample]:
    """Every sample called `name` in a Prometheus text page."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when absent)."""
    for sample in samples(text, name):
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return 0.0


async def metrics_of(http: httpx.AsyncClient, where: int | str) -> str:
    """The `/metrics` page of a service, by port or base URL."""
    base = where if isinstance(where, str) and where.startswith("http") else f"http://127.0.0.1:{where}"
    response = await http.get(f"{base}/metrics")
    assert response.status_code == 200
    return response.text


class ServiceLog:
    """What a service of the test stack logged from the moment this was made (its log is one JSON object a line)."""

    def __init__(self, stack: Any, label: str) -> None:
        self.label = label
        self.path = stack.work_dir / "logs" / f"{label}.log"
        self.offset = self.path.stat().st_size

    def lines(self) -> list[str]:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            # Lines end at "\n" only: `splitlines` would also cut at U+0085 or U+2028, which JSON writes raw
            # (a fuzzed path carries them into an access line).
            return log.read().decode("utf-8", "replace").split("\n")[:-1]

    def tracebacks(self) -> list[str]:
        """Lines carrying a traceback: a logged exception, or one that reached stderr as plain text."""
        return [line for line in self.lines() if '"exc_info"' in line or "Traceback (most recent call last)" in line]
