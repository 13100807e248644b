"""How the persister's cost grows with the size of an output: 64 KiB, 1 MiB, 8 MiB and 64 MiB.

Starts its own PostgreSQL, RabbitMQ, S3 server, simulator, gateway and persister on free ports.

- Time from a signed callback's arrival at the gateway to the terminal row, beside a bare download-and-put of
  the same bytes to the same S3 server, medians of several runs (goal at 1 MiB: at most 1.5 times the bare).
- Peak RSS (VmHWM) of the persister process once each size has been stored: streaming means a 64 MiB output
  may cost little more than a 1 MiB one (goal: under 16 MiB more).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.proc import peak_rss_bytes
from bench.table import Row, quick, verdict
from common.predictions import TERMINAL, SkytellsStatus, Status
from common.signing import SIGNATURE_HEADER, sign
from common.storage import open_s3
from devstack.environment import loopback_env
from devstack.stack import Stack

MIB = 1024 * 1024
RUNS = 3 if quick() else 9
NAME = "persister"
SIZES = ((64 * 1024, "64 KiB"), (MIB, "1 MiB"), (8 * MIB, "8 MiB"), (64 * MIB, "64 MiB"))
SIM_KEY = {"x-api-key": "sim-key"}


class _Bench:
    def __init__(self, stack: Stack, conn: asyncpg.Connection, http: httpx.AsyncClient) -> None:
        self.stack = stack
        self.env = stack.env
        self.conn = conn
        self.http = http
        self.sim = f"http://127.0.0.1:{self.env['SIM_PORT']}"
        self.webhook = f"http://127.0.0.1:{self.env['WEBHOOK_PORT']}/api/webhooks"

    async def prediction(self, size: int) -> dict[str, Any]:
        """A finished prediction of about `size` bytes whose callback the simulator does not send."""
        created = await self.http.post(
            f"{self.sim}/v1/predictions",
            json={"model": "truefusion-pro", "input": {"prompt": f"bench #sim:size={size} #sim:drop #sim:delay=0.05"}},
            headers=SIM_KEY,
        )
        pid = created.json()["id"]
        while True:
            view = (await self.http.get(f"{self.sim}/v1/predictions/{pid}", headers=SIM_KEY)).json()
            if view["status"] == SkytellsStatus.SUCCEEDED:
                return dict(view)
            await asyncio.sleep(0.02)

    async def persist(self, prediction: dict[str, Any]) -> float:
        """Seconds from the callback's arrival at the gateway to the generation's terminal row."""
        gid = uuid.uuid4()
        await self.conn.execute(
            "INSERT INTO generations (id, user_id, model, prompt, prediction_id) VALUES ($1, 'bench', 'm', 'p', $2)",
            gid,
            prediction["id"],
        )
        body = json.dumps(prediction).encode()
        headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(body, self.env["SIM_WEBHOOK_SECRET"])}
        started = time.perf_counter()
        answer = await self.http.post(self.webhook, content=body, headers=headers)
        if answer.status_code != 200:
            raise RuntimeError(f"gateway answered {answer.status_code}: {answer.text}")
        while True:
            status = await self.conn.fetchval("SELECT status FROM generations WHERE id = $1", gid)
            if status in TERMINAL:
                elapsed = time.perf_counter() - started
                if status != Status.SUCCEEDED:
                    raise RuntimeError(f"bench generation ended {status}")
                return elapsed
            await asyncio.sleep(0.001)

    async def bare_copy(self, s3: Any, prediction: dict[str, Any]) -> float:
        """Seconds to download the output and put the same bytes into the same S3 server."""
        started = time.perf_counter()
        response = await self.http.get(prediction["output"][0])
        await s3.put_object(
            Bucket=self.env["S3_BUCKET"], Key=f"bare/{uuid.uuid4()}.png", Body=response.content, ContentType="image/png"
        )
        return time.perf_counter() - started


async def _measure(stack: Stack) -> list[Row]:
    persister_pid = stack.processes["persister"].pid
    rows: list[Row] = []
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        async with httpx.AsyncClient(timeout=120) as http, open_s3(stack.settings) as s3:
            bench = _Bench(stack, conn, http)
            await bench.persist(await bench.prediction(64 * 1024))  # warm every code path first
            # How cost grows with the output's size: time beside a bare copy of the same bytes, and the peak RSS
            # (VmHWM only grows, and sizes go up, so each figure is the peak while storing that size).
            peaks: dict[int, float] = {}
            for size, label in SIZES:
                persisted: list[float] = []
                bare: list[float] = []
                for _ in range(RUNS if size <= MIB else 2):
                    prediction = await bench.prediction(size)
                    bare.append(await bench.bare_copy(s3, prediction))
                    persisted.append(await bench.persist(prediction))
                peaks[size] = peak_rss_bytes(persister_pid) / MIB
                # Medians: the machine is shared, and a single slow run should not decide a verdict either way.
                p, b = statistics.median(persisted), statistics.median(bare)
                value = f"{p * 1000:,.0f} ms / {b * 1000:,.0f} ms"
                metric = f"{label}: callback -> stored / bare download + put (median of {len(persisted)})"
                if size == MIB:
                    rows.append(Row(NAME, metric, value))
                    rows.append(Row(NAME, "1 MiB: persister / bare", f"{p / b:.2f}x", "<= 1.5x", verdict(p / b <= 1.5)))
                else:
                    rows.append(Row(NAME, metric, value))
                rows.append(Row(NAME, f"{label}: peak RSS of the persister", f"{peaks[size]:.1f} MiB"))
            extra = peaks[64 * MIB] - peaks[MIB]
            rows.append(
                Row(NAME, "extra peak RSS for 64 MiB vs 1 MiB", f"{extra:.1f} MiB", "< 16 MiB", verdict(extra < 16))
            )
    finally:
        await conn.close()
    return rows


def run() -> list[Row]:
    env = loopback_env(SIM_DELAY_S="0.05", OUTPUT_MAX_BYTES=str(128 * MIB))
    stack = Stack(env, Path(tempfile.mkdtemp(prefix="studio-bench-persister-")))
    try:
        stack.start_infrastructure()
        stack.start_simulator()
        stack.start_service("webhook")
        stack.start_service("persister")
        return asyncio.run(_measure(stack))
    finally:
        stack.stop()
