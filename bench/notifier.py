"""How fast the notifier delivers webhooks, beside a bare aiohttp client loop POSTing the same signed bodies.

Starts PostgreSQL (migrated) and one notifier on free ports, and receivers here on eight loopback addresses
(the notifier keeps at most 4 attempts in flight per destination host, so eight hosts make 32 at once). The bare
loop runs at that same concurrency with bodies signed the same way, so the ratio is what the notifier's own work
(claiming, rendering, signing, recording each attempt) costs. Goal: at least 0.5 of the bare rate.

Then, at half the notifier's rate, generations end one by one through the same statement the persister uses,
and the time from each commit to its webhook's arrival is measured (p50, p99; goal: p99 under 250 ms): the
LISTEN/NOTIFY wake-up, the claim and the first attempt.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web
from standardwebhooks import Webhook

from bench.table import Row, quick, verdict
from common.db import deliveries
from common.db.outbox import recorded
from common.migrate import migrate
from common.representation import dumps
from devstack.postgres import Postgres
from devstack.processes import ManagedProcess, free_port, http_ok, wait_until

NAME = "notifier"
HOSTS = [f"127.0.0.{n}" for n in range(1, 9)]
CONCURRENCY = 4 * len(HOSTS)
GOAL_RATIO = 0.5
FIRST_ATTEMPT_P99_GOAL_MS = 250.0
USER = "bench-user"

END_ALL = recorded(
    """
UPDATE generations SET status = 'canceled', completed_at = now(), updated_at = now()
WHERE user_id = $1 AND status = 'queued'
RETURNING *
"""
)
END_ONE = recorded(
    """
UPDATE generations SET status = 'canceled', completed_at = now(), updated_at = now()
WHERE id = $1 AND status = 'queued'
RETURNING *
"""
)
INSERT = """
INSERT INTO generations (id, user_id, model, prompt, webhook, webhook_events)
SELECT gen_random_uuid(), $1, 'truefusion-pro', 'bench', ($2::text[])[1 + n % cardinality($2::text[])], '{completed}'
FROM generate_series(0, $3 - 1) AS n
RETURNING id
"""


class Receivers:
    """One aiohttp app on every loopback address of HOSTS; `arrived` maps webhook-id -> arrival time."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrived: dict[str, float] = {}
        self.expected = 0
        self.all_in = asyncio.Event()
        self.runner: web.AppRunner | None = None

    def urls(self) -> list[str]:
        return [f"http://{host}:{self.port}/hook" for host in HOSTS]

    async def receive(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived.setdefault(request.headers.get("webhook-id", uuid.uuid4().hex), time.perf_counter())
        if len(self.arrived) >= self.expected:
            self.all_in.set()
        return web.Response(status=204)

    def expect(self, count: int) -> None:
        self.arrived.clear()
        self.expected = count
        self.all_in.clear()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.receive)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        for host in HOSTS:
            await web.TCPSite(self.runner, host, self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _bare(receivers: Receivers, count: int, key: str) -> float:
    """Deliveries per second of a bare client loop: the same signed bodies, the same concurrency and hosts."""
    signer = Webhook(key)
    body = dumps({"type": "generation.completed", "timestamp": datetime.now(UTC).isoformat(), "data": {"id": "x"}})
    urls = receivers.urls()
    receivers.expect(count)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)
    limits = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=limits) as http:

        async def worker() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                msg_id = str(uuid.uuid4())
                moment = datetime.fromtimestamp(int(time.time()), UTC)
                headers = {
                    "Content-Type": "application/json",
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(int(moment.timestamp())),
                    "webhook-signature": signer.sign(msg_id, moment, body),
                }
                async with http.post(urls[n % len(urls)], data=body, headers=headers) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return count / (time.perf_counter() - started)


async def _notifier_rate(pool: asyncpg.Pool, receivers: Receivers, count: int) -> float:
    async with pool.acquire() as conn:
        await conn.fetch(INSERT, USER, receivers.urls(), count)
        receivers.expect(count)
        started = time.perf_counter()
        await conn.fetch(END_ALL, USER)  # every delivery recorded, and the notifier woken, at this commit
    await asyncio.wait_for(receivers.all_in.wait(), 600)
    return count / (max(receivers.arrived.values()) - started)


async def _latencies(pool: asyncpg.Pool, receivers: Receivers, rate: float, seconds: float) -> list[float]:
    count = max(20, int(rate * seconds))
    async with pool.acquire() as conn:
        ids = [row["id"] for row in await conn.fetch(INSERT, USER, receivers.urls(), count)]
        receivers.expect(count)
        committed: dict[uuid.UUID, float] = {}
        next_at = time.perf_counter()
        for generation_id in ids:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await conn.fetch(END_ONE, generation_id)
            committed[generation_id] = time.perf_counter()
            next_at += 1 / rate
        await asyncio.wait_for(receivers.all_in.wait(), 600)
        rows = await conn.fetch(
            "SELECT id::text, generation_id FROM webhook_deliveries WHERE generation_id = ANY($1::uuid[])", ids
        )
    return sorted(receivers.arrived[row["id"]] - committed[row["generation_id"]] for row in rows)


async def _measure(database_url: str) -> list[Row]:
    count = 1000 if quick() else 4000
    receivers = Receivers()
    await receivers.start()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            key = await deliveries.ensure_key(conn, USER)
        bare = await _bare(receivers, count, key)
        rate = await _notifier_rate(pool, receivers, count)
        latencies = await _latencies(pool, receivers, rate / 2, 5 if quick() else 15)
    finally:
        await pool.close()
        await receivers.stop()
    ratio = rate / bare
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return [
        Row(NAME, f"bare aiohttp loop: {count:,} signed POSTs, {CONCURRENCY} at once", f"{bare:,.0f}/s"),
        Row(NAME, f"1 notifier: {count:,} deliveries", f"{rate:,.0f}/s"),
        Row(NAME, "1 notifier / bare", f"{ratio:.2f}x", f">= {GOAL_RATIO}x", verdict(ratio >= GOAL_RATIO)),
        Row(NAME, f"change to first attempt at {rate / 2:,.0f}/s: p50", f"{p50:.1f} ms"),
        Row(
            NAME,
            f"change to first attempt at {rate / 2:,.0f}/s: p99",
            f"{p99:.1f} ms",
            f"< {FIRST_ATTEMPT_P99_GOAL_MS:g} ms",
            verdict(p99 < FIRST_ATTEMPT_P99_GOAL_MS),
        ),
    ]


def run() -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="studio-bench-notifier-"))
    database_url = f"postgresql://studio:studio@127.0.0.1:{free_port()}/studio"
    postgres = Postgres(database_url).start()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NOTIFIER_PORT": str(port),
        "NOTIFY_ALLOW_HOSTS": ",".join(HOSTS),
        "LOG_LEVEL": "WARNING",
    }
    process: ManagedProcess | None = None
    try:
        asyncio.run(migrate(database_url))
        process = ManagedProcess.python(NAME, "services.notifier", env=env, log_path=work / "notifier.log").start()
        wait_until("notifier", lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 60, process)
        return asyncio.run(_measure(database_url))
    finally:
        if process is not None:
            process.stop()
        postgres.stop()
