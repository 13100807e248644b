"""Repeats of an `Idempotency-Key` whose first request is still waiting for Skytells wait on the live updates,
holding no database connection: a burst of them neither drains the pool nor hammers the database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web

from common.settings import Settings
from devstack.processes import free_port
from devstack.stack import Stack
from tests.helpers import listening, scratch_database

CREATE_DELAY_S = 3.0
REPEATS = 20


@pytest.fixture(scope="module")
async def slow_skytells(sim: str) -> AsyncIterator[str]:
    """The simulator behind a proxy that takes CREATE_DELAY_S to answer each create call."""
    async with httpx.AsyncClient(timeout=30) as upstream:

        async def forward(request: web.Request) -> web.Response:
            if request.method == "POST" and request.path.rstrip("/") == "/v1/predictions":
                await asyncio.sleep(CREATE_DELAY_S)
            answer = await upstream.request(
                request.method,
                f"{sim}{request.path_qs}",
                content=await request.read(),
                headers={k: v for k, v in request.headers.items() if k.lower() in ("x-api-key", "content-type")},
            )
            return web.Response(body=answer.content, status=answer.status_code, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        async with listening(app) as url:
            yield f"{url}/v1"


@dataclass
class OwnApi:
    url: str
    database: str  # its name: the API is its only user, so the database's statistics are the API's own


@pytest.fixture(scope="module")
async def api(services: Stack, settings: Settings, slow_skytells: str) -> AsyncIterator[OwnApi]:
    async with scratch_database(settings.database_url) as database_url:
        port = free_port()
        env = {
            "API_PORT": str(port),
            "SKYTELLS_BASE_URL": slow_skytells,
            "DATABASE_POOL_SIZE": "2",
            "DATABASE_URL": database_url,  # migrated by the API as it starts
        }
        process = await asyncio.to_thread(services.start_service, "api", env, "api-slow-skytells")
        try:
            yield OwnApi(f"http://127.0.0.1:{port}", database_url.rsplit("/", 1)[1])
        finally:
            await asyncio.to_thread(process.stop)


async def _commits(db, api: OwnApi) -> int:  # type: ignore[no-untyped-def]
    return int(await db.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", api.database))


async def test_a_burst_of_repeats_waits_without_holding_connections(api, http, auth, db):
    headers = {**auth, "Idempotency-Key": uuid.uuid4().hex}
    # No callback (`#sim:drop`): the generation is in this API's database only, which no persister reads.
    body = {"prompt": f"a patient lighthouse {uuid.uuid4().hex[:8]} #sim:drop"}
    await asyncio.sleep(1.5)  # the statistics of the API's start (its migrations) reach pg_stat_database first
    before = await _commits(db, api)
    first = asyncio.create_task(http.post(f"{api.url}/api/generate", json=body, headers=headers))
    await asyncio.sleep(0.5)  # the first request now waits for Skytells
    repeats = [
        asyncio.create_task(http.post(f"{api.url}/api/generate", json=body, headers=headers)) for _ in range(REPEATS)
    ]
    await asyncio.sleep(0.5)
    # With two connections in the pool and twenty requests waiting, the API still answers at once.
    started = asyncio.get_running_loop().time()
    assert (await http.get(f"{api.url}/api/me", headers=auth)).status_code == 200
    assert asyncio.get_running_loop().time() - started < 1.0

    created = await first
    answers = await asyncio.gather(*repeats)
    assert created.status_code == 201, created.text
    assert {a.status_code for a in answers} == {200} and {a.json()["id"] for a in answers} == {created.json()["id"]}
    await asyncio.sleep(1.5)  # statistics reach pg_stat_database within a second
    # Polling every 50 ms for ~2.5 s, each repeat made about fifty transactions (a thousand in all); woken by the
    # updates (and the hub's re-read every 2 s), a handful each.
    assert await _commits(db, api) - before < 10 * REPEATS
