"""What one account can hold of an API replica through its event streams: a bounded number of streams, and no
handler pinned by a client that stays connected but stops reading."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from common.db import generations
from devstack.processes import free_port
from devstack.stack import Stack
from devstack.tokens import issue_token
from services.api.live.streams import WRITE_TIMEOUT_S
from tests.helpers import JWT_SECRET, bearer, eventually, metric, metrics_of

WATCHERS = "studio_api_live_watchers"
STREAMS_PER_USER = 2


@pytest.fixture(scope="module")
async def api(services: Stack) -> AsyncIterator[str]:
    """An API replica of the module's own, so its gauges and stream slots count this module's streams only."""
    port = free_port()
    env = {"API_PORT": str(port), "STREAMS_PER_USER": str(STREAMS_PER_USER)}
    process = await asyncio.to_thread(services.start_service, "api", env, "api-live-limits")
    yield f"http://127.0.0.1:{port}"
    await asyncio.to_thread(process.stop)


def _auth(user: str) -> dict[str, str]:
    return bearer(user)


async def test_one_stream_more_than_streams_per_user_is_a_429_and_a_closed_one_frees_its_slot(api, http):
    user = f"streams-{uuid.uuid4().hex[:8]}"
    url = f"{api}/api/generations/events"
    async with http.stream("GET", url, headers=_auth(user)) as first, http.stream("GET", url, headers=_auth(user)):
        assert first.status_code == 200
        refused = await http.get(url, headers=_auth(user))
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        assert refused.json() == {"error": f"Too many open event streams (at most {STREAMS_PER_USER} per user)"}
        other = await http.get(f"{api}/api/predictions/{uuid.uuid4()}/events", headers=_auth(f"{user}-other"))
        assert other.status_code == 404  # another user's slots are their own
    # A departed client's handler ends within the hub's reaping interval, and its slot with it.
    await eventually("a slot to be free again", _opens(http, url, user), timeout=5)


async def test_a_client_that_stops_reading_is_disconnected_and_frees_the_handler(api, http, db, settings):
    """The per-user stream opens with every unfinished generation: far more than the sockets' buffers hold for a
    client that never reads (prompts this long are written straight to the table: 10 MB of events, where the
    kernel buffers at most a few). Its write waits, and after WRITE_TIMEOUT_S the client is dropped."""
    user = f"stalled-{uuid.uuid4().hex[:8]}"
    async with db.transaction():
        for _ in range(1000):
            await generations.insert_within_quota(
                db, user_id=user, model=settings.allowed_models[0], prompt="x" * 10_000, max_active=10_000
            )
    baseline = metric(await metrics_of(http, api), WATCHERS)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: it sets the window
    try:
        port = int(api.rsplit(":", 1)[1])
        await asyncio.to_thread(client.connect, ("127.0.0.1", port))
        token = issue_token(JWT_SECRET, user)
        request = f"GET /api/generations/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        client.sendall(request.encode())
        await eventually("the stream to open", _watching(http, api, baseline + 1), timeout=10)
        # Never read: the handler is stuck in a write until the deadline, then gives everything back.
        await eventually("the stalled stream to be dropped", _watching(http, api, baseline), WRITE_TIMEOUT_S + 15, 1)
        assert await _opens(http, f"{api}/api/generations/events", user)()  # its slot is free again
    finally:
        client.close()
        await db.execute("DELETE FROM generations WHERE user_id = $1", user)


def _opens(http: httpx.AsyncClient, url: str, user: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        async with http.stream("GET", url, headers=_auth(user)) as response:
            return response.status_code == 200

    return check


def _watching(http: httpx.AsyncClient, api: str, count: float):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return metric(await metrics_of(http, api), WATCHERS) == count

    return check
