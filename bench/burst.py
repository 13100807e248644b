"""A launch burst: thousands of 256 KiB completions arriving at once for generations already recorded.

The simulator holds a few hundred finished predictions (its CDN serves their PNGs); each completion names its
own prediction, recorded as a generation in PostgreSQL, and one of those outputs; then every completion event is
published at once, as the gateway would, and the clock runs until the last generation is stored.

Beside it, in the same run, bare copy loops (`python -m bench.burst URLS_FILE`): the same downloads from the
simulator's CDN and the same puts to the same S3 server, with the same HTTP and S3 clients, at the same
concurrency (one process of PERSISTER_PREFETCH workers per persister replica), and no broker, database or
checks. Goal: the persisters drain at 0.7 of the bare rate or more, with one replica and with two; and 10,000
completions stored within Skytells' 300 s retention.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from bench.table import Row, quick, verdict
from common.broker import Broker
from common.events import PredictionEvent
from common.predictions import parse_prediction
from common.process import event_loop
from common.settings import Settings
from common.storage import open_s3
from devstack.environment import loopback_env
from devstack.processes import ROOT, free_port
from devstack.stack import Stack
from services.persister.download import CHUNK

NAME = "burst"
SIZE = 256 * 1024
PREFETCH = 8
# Completions point at the outputs of a few hundred real predictions of the simulator, round robin: the same
# downloads from its CDN, without it drawing ten thousand PNGs first.
SOURCES = 100 if quick() else 300
ONE_REPLICA = 300 if quick() else 1_000
TWO_REPLICAS = 600 if quick() else 10_000
RATIO_GOAL = 0.7
RETENTION_S = 300.0
SIM_KEY = {"x-api-key": "sim-key"}


async def _predictions(sim: str, count: int) -> list[dict[str, object]]:
    """`count` finished predictions of SIZE bytes whose callbacks the simulator does not send."""
    prompt = f"burst #sim:size={SIZE} #sim:drop #sim:delay=0.01"
    body = {"model": "truefusion-pro", "input": {"prompt": prompt}}
    limit = asyncio.Semaphore(32)
    async with httpx.AsyncClient(timeout=60) as http:

        async def create() -> str:
            async with limit:
                answer = await http.post(f"{sim}/v1/predictions", json=body, headers=SIM_KEY)
                answer.raise_for_status()
                return str(answer.json()["id"])

        ids = await asyncio.gather(*(create() for _ in range(count)))

        async def finished(pid: str) -> dict[str, object]:
            async with limit:
                while True:
                    view: dict[str, object] = (await http.get(f"{sim}/v1/predictions/{pid}", headers=SIM_KEY)).json()
                    if view["status"] == "succeeded":
                        return view
                    await asyncio.sleep(0.05)

        return list(await asyncio.gather(*(finished(pid) for pid in ids)))


def _completions(sources: list[dict[str, object]], count: int, phase: str) -> list[dict[str, object]]:
    """`count` completed predictions, each with its own id, whose outputs are those of `sources` in turn."""
    return [
        {"id": f"pred_burst_{phase}_{n:05d}", "status": "succeeded", "output": sources[n % len(sources)]["output"]}
        for n in range(count)
    ]


async def _record(database_url: str, predictions: list[dict[str, object]]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO generations (id, user_id, model, prompt, prediction_id, status)"
            " VALUES ($1, 'bench', 'truefusion-pro', 'burst', $2, 'processing')",
            [(uuid.uuid4(), p["id"]) for p in predictions],
        )
    finally:
        await conn.close()


async def _drain(settings: Settings, predictions: list[dict[str, object]]) -> tuple[float, int]:
    """Publish every completion at once; seconds until the last generation is terminal, and how many failed."""
    events = [PredictionEvent.from_prediction(parse_prediction(p), "webhook") for p in predictions]
    ids = [str(p["id"]) for p in predictions]
    broker = await Broker.connect(settings.amqp_url)
    conn = await asyncpg.connect(settings.database_url)
    limit = asyncio.Semaphore(64)

    async def publish(event: PredictionEvent) -> None:
        async with limit:
            await broker.publish_event(event)

    try:
        started = time.perf_counter()
        publishing = asyncio.ensure_future(asyncio.gather(*(publish(e) for e in events)))
        query = "SELECT count(*) FILTER (WHERE status <> 'processing'), count(*) FILTER (WHERE status = 'failed')"
        query += " FROM generations WHERE prediction_id = ANY($1::text[])"
        while True:
            done, failed = await conn.fetchrow(query, ids)
            if done == len(ids):
                await publishing
                return time.perf_counter() - started, failed
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
        await broker.close()


def _urls(predictions: list[dict[str, object]]) -> list[str]:
    return [str(url) for p in predictions for url in p["output"]]  # type: ignore[attr-defined]


def _bare(env: dict[str, str], urls: list[str], processes: int, work: Path) -> float:
    """Copies per second of `processes` bare copy loops of PREFETCH workers each, splitting `urls`."""
    shares = [urls[i::processes] for i in range(processes)]
    files = []
    for n, share in enumerate(shares):
        path = work / f"bare-{processes}-{n}.json"
        path.write_text(json.dumps(share))
        files.append(path)
    # Each loop opens its clients, says so, and waits for the word: start-up is not part of the copy rate.
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.burst", str(f)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for f in files
    ]
    for process in running:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("bare copy loop did not start")
    started = time.perf_counter()
    for process in running:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in running:
        if process.wait(timeout=900) != 0:
            raise RuntimeError("bare copy loop failed")
    return len(urls) / (time.perf_counter() - started)


async def _bare_loop(urls: list[str]) -> None:
    settings = Settings.from_env(os.environ)
    queue = list(urls)
    async with httpx.AsyncClient(timeout=60) as http, open_s3(settings) as s3:

        async def worker() -> None:
            while queue:
                url = queue.pop()
                # Read as the persister reads (raw, in CHUNK pieces): httpx's default small reads cost more.
                async with http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
                    response.raise_for_status()
                    body = b"".join([chunk async for chunk in response.aiter_raw(CHUNK)])
                key = f"bare/{uuid.uuid4()}.png"
                await s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=body, ContentType="image/png")

        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.gather(*(worker() for _ in range(PREFETCH)))


def run() -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="studio-bench-burst-"))
    stack = Stack(
        loopback_env(
            SIM_OUTPUT_TTL_S="3600",
            PERSISTER_PREFETCH=str(PREFETCH),
            RECONCILE_AFTER_S="86400",  # the reconciler must not join in: this measures the callbacks' path
        ),
        work,
    )
    try:
        stack.start_infrastructure()
        stack.start_simulator()
        settings = stack.settings
        sim = f"http://127.0.0.1:{stack.env['SIM_PORT']}"
        sources = asyncio.run(_predictions(sim, SOURCES))
        first, second = _completions(sources, ONE_REPLICA, "one"), _completions(sources, TWO_REPLICAS, "two")
        asyncio.run(_record(settings.database_url, first + second))
        bare_one = _bare(stack.env, _urls(first), 1, work)
        bare_two = _bare(stack.env, _urls(second[: 2 * ONE_REPLICA]), 2, work)
        stack.start_service("persister")
        one_s, one_failed = asyncio.run(_drain(settings, first))
        stack.start_service("persister", {"PERSISTER_PORT": str(free_port())}, label="persister-2")
        two_s, two_failed = asyncio.run(_drain(settings, second))
    finally:
        stack.stop()
    one_rate, two_rate = ONE_REPLICA / one_s, TWO_REPLICAS / two_s
    rows = [
        Row(NAME, f"bare copy loop, {PREFETCH} workers (256 KiB: CDN download + S3 put)", f"{bare_one:,.1f}/s"),
        Row(NAME, f"1 persister: {ONE_REPLICA:,} completions stored in {one_s:.1f} s", f"{one_rate:,.1f}/s"),
        Row(
            NAME,
            "1 persister / bare",
            f"{one_rate / bare_one:.2f}",
            f">= {RATIO_GOAL}",
            verdict(one_rate / bare_one >= RATIO_GOAL),
        ),
        Row(NAME, f"bare copy loop, 2 processes x {PREFETCH} workers", f"{bare_two:,.1f}/s"),
        Row(NAME, f"2 persisters: {TWO_REPLICAS:,} completions stored in {two_s:.1f} s", f"{two_rate:,.1f}/s"),
        Row(
            NAME,
            "2 persisters / bare",
            f"{two_rate / bare_two:.2f}",
            f">= {RATIO_GOAL}",
            verdict(two_rate / bare_two >= RATIO_GOAL),
        ),
        Row(
            NAME,
            "completions not stored (failed)",
            str(one_failed + two_failed),
            "0",
            verdict(one_failed + two_failed == 0),
        ),
    ]
    if TWO_REPLICAS >= 10_000:
        # What the bare loops would need for as many copies says whether the servers, not Studio, set the pace.
        value = f"{two_s:.0f} s (bare copy: {TWO_REPLICAS / bare_two:.0f} s)"
        met = verdict(two_s < RETENTION_S)
        rows.append(
            Row(NAME, f"{TWO_REPLICAS:,} completions stored (2 persisters)", value, f"< {RETENTION_S:.0f} s", met)
        )
    else:
        rows.append(Row(NAME, "10,000 completions stored within 300 s", "(full run only)"))
    return rows


if __name__ == "__main__":  # a bare copy loop: python -m bench.burst URLS_FILE
    loop = event_loop(Settings.from_env(os.environ).uvloop)  # the persister's loop
    loop.run_until_complete(_bare_loop(json.loads(Path(sys.argv[1]).read_text())))
