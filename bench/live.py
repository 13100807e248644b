"""Live updates: how fast a change reaches an open stream, what idle streams cost, how soon `Prefer: wait` answers.

Starts its own PostgreSQL, RabbitMQ, S3 server, simulator and the three services on free ports.

- Latency from the persister's final write (the row's `completedAt`, stamped by PostgreSQL in that write) to
  the terminal event read on an open per-user stream, over 200 generations made 5 at a time: median and p99
  (goal: p99 under 100 ms). Same machine, same clock.
- API resident memory with 1,000 idle streams open, minus with none (goal: under 50 MiB), and with 5,000:
  each stream a raw keep-alive connection of its own user, opened and then left silent.
- `Prefer: wait` on generations that complete after 1 s: time from `completedAt` to the answer (goal: median
  within 150 ms; the worst of the runs is shown too).
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

from bench.proc import rss_bytes
from bench.table import Row
from common.predictions import Status
from devstack.environment import loopback_env
from devstack.stack import Stack
from devstack.tokens import issue_token
from studio_cli.sse import read_events

NAME = "live"
GENERATIONS = 200
CONCURRENCY = 5
WAIT_RUNS = 10
MIB = 1024 * 1024
JWT_SECRET = "bench-live-jwt-secret-0123456789abcdef"


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(JWT_SECRET, user)}"}


def _ms_since(stamp: str, now: float) -> float:
    return (now - datetime.fromisoformat(stamp).timestamp()) * 1000


def _ok(met: bool) -> str:
    return "ok" if met else "MISSED"


async def _stream_latency(http: httpx.AsyncClient, api: str) -> list[float]:
    """ms from each generation's final write to its terminal event on an open per-user stream."""
    auth = _auth(f"bench-stream-{uuid.uuid4().hex[:8]}")
    latencies: list[float] = []
    async with http.stream("GET", f"{api}/api/generations/events", headers=auth) as response:

        async def read() -> None:
            async for event in read_events(response):
                received = time.time()
                generation = event.json()
                if generation["completedAt"]:
                    latencies.append(_ms_since(generation["completedAt"], received))
                    if len(latencies) == GENERATIONS:
                        return

        reading = asyncio.create_task(read())
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(n: int) -> None:
            async with gate:
                body = {"prompt": f"bench stream {n}"}
                created = await http.post(f"{api}/api/generate", json=body, headers={**auth, "Prefer": "wait=30"})
                if created.status_code != 201 or created.json()["status"] != Status.SUCCEEDED:
                    raise RuntimeError(f"bench generation: {created.status_code} {created.text}")

        await asyncio.gather(*(one(n) for n in range(GENERATIONS)))
        await asyncio.wait_for(reading, 30)
    return latencies


async def _open_idle_streams(api_port: int, count: int) -> list[asyncio.StreamWriter]:
    """`count` per-user streams, each its own connection and user, left open and silent."""
    writers: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(100)

    async def one(n: int) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
            token = _auth(f"bench-idle-{n}")["Authorization"]
            request = f"GET /api/generations/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n"
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"stream refused: {head[:80]!r}")
            writers.append(writer)

    await asyncio.gather(*(one(n) for n in range(len(writers), len(writers) + count)))
    return writers


async def _memory(api_port: int, pid: int) -> list[Row]:
    await asyncio.sleep(3)  # let start-up allocations settle
    none = rss_bytes(pid)
    writers = await _open_idle_streams(api_port, 1000)
    await asyncio.sleep(3)
    thousand = rss_bytes(pid)
    writers += await _open_idle_streams(api_port, 4000)
    await asyncio.sleep(3)
    five_thousand = rss_bytes(pid)
    for writer in writers:
        writer.close()
    extra = (thousand - none) / MIB
    return [
        Row(NAME, "API RSS, no stream open", f"{none / MIB:.1f} MiB"),
        Row(NAME, "API RSS, 1,000 idle streams minus none", f"{extra:.1f} MiB", "< 50 MiB", _ok(extra < 50)),
        Row(NAME, "API RSS, 5,000 idle streams minus none", f"{(five_thousand - none) / MIB:.1f} MiB"),
    ]


async def _prefer_wait(http: httpx.AsyncClient, api: str) -> list[float]:
    """ms from completion to the answer of `Prefer: wait` for generations that complete after 1 s."""
    auth = _auth(f"bench-wait-{uuid.uuid4().hex[:8]}")
    delays = []
    for n in range(WAIT_RUNS):
        body = {"prompt": f"bench wait {n} #sim:delay=1"}
        answer = await http.post(f"{api}/api/generate", json=body, headers={**auth, "Prefer": "wait=30"})
        answered = time.time()
        generation = answer.json()
        if generation["status"] != "succeeded":
            raise RuntimeError(f"bench generation did not succeed in time: {generation}")
        delays.append(_ms_since(generation["completedAt"], answered))
    return delays


async def _measure(stack: Stack) -> list[Row]:
    api = f"http://127.0.0.1:{stack.env['API_PORT']}"
    rows: list[Row] = []
    limits = httpx.Limits(max_connections=CONCURRENCY + 5)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await _stream_latency(http, api)  # warm every path once, then measure
        latencies = sorted(await _stream_latency(http, api))
        p50, p99 = statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]
        rows.append(Row(NAME, f"final write -> stream event, median of {len(latencies)}", f"{p50:.1f} ms"))
        rows.append(Row(NAME, "final write -> stream event, p99", f"{p99:.1f} ms", "< 100 ms", _ok(p99 < 100)))
        waits = await _prefer_wait(http, api)
        median = statistics.median(waits)
        rows.append(
            Row(
                NAME,
                f"Prefer: wait answered after completion, median of {WAIT_RUNS}",
                f"{median:.1f} ms",
                "< 150 ms",
                _ok(median < 150),
            )
        )
        rows.append(Row(NAME, "Prefer: wait answered after completion, worst", f"{max(waits):.1f} ms"))
    rows += await _memory(int(stack.env["API_PORT"]), stack.processes["api"].pid)
    return rows


def run() -> list[Row]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20_000)), hard))  # 5,000 streams, both ends
    stack = Stack(
        loopback_env(
            S3_BUCKET="studio-bench-live",
            SIM_DELAY_S="0.05",
            AUTH_JWT_SECRET=JWT_SECRET,
            QUOTA_MAX_ACTIVE="1000",
            RATE_LIMIT_CREATES_PER_MINUTE="1000000",
        ),
        Path(tempfile.mkdtemp(prefix="studio-bench-live-")),
    )
    try:
        stack.start_infrastructure()
        stack.start_simulator()
        for service in ("api", "webhook", "persister"):
            stack.start_service(service)
        return asyncio.run(_measure(stack))
    finally:
        stack.stop()
