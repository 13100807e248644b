"""How many predictions the Skytells simulator serves per minute of one core: create, signed callbacks, download.

Starts the simulator alone on a free port. Many clients at once create predictions whose callbacks come back to a
receiver here; each completion callback triggers the download of its output from the simulator's CDN. A
prediction counts once its output is downloaded whole. The simulator is one process with one event loop, so its
CPU time (user + system, from /proc) is one core's work: predictions per CPU-minute is what one core sustains,
however busy the rest of the machine is. Goal: thousands (2,000 or more) per minute, for the default image and
for 256 KiB ones.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.proc import cpu_seconds
from bench.table import Row
from common.predictions import SkytellsStatus
from devstack.processes import ManagedProcess, free_port, http_ok, wait_until

PREDICTIONS = 1500
CONCURRENCY = 64
GOAL_PER_MIN = 2000


async def _drive(sim: str, pid: int, prompt: str) -> tuple[float, float]:
    """Wall seconds and simulator CPU seconds for PREDICTIONS predictions, each downloaded once."""
    done = asyncio.Event()
    downloads: set[asyncio.Task[None]] = set()
    finished = 0
    hook_port = free_port()
    # aiohttp, not httpx, drives the load: httpx's pool, not the simulator, was the limit at this concurrency.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def download(url: str) -> None:
            nonlocal finished
            async with http.get(url) as response:
                data = await response.read()
            if response.status != 200 or not data.startswith(b"\x89PNG"):
                raise RuntimeError(f"download of {url} answered {response.status}")
            finished += 1
            if finished == PREDICTIONS:
                done.set()

        async def receive(request: web.Request) -> web.Response:
            payload = await request.json()
            if payload.get("status") == SkytellsStatus.SUCCEEDED:
                task = asyncio.create_task(download(payload["output"][0]))
                downloads.add(task)
                task.add_done_callback(downloads.discard)
            return web.Response(status=204)

        hooks = web.Application()
        hooks.router.add_post("/hook", receive)
        runner = web.AppRunner(hooks, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", hook_port).start()
        body = {
            "model": "truefusion-pro",
            "input": {"prompt": prompt},
            "webhook": {"url": f"http://127.0.0.1:{hook_port}/hook", "events": ["started", "completed"]},
        }
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(PREDICTIONS):
            queue.put_nowait(n)

        async def creator() -> None:
            while not queue.empty():
                queue.get_nowait()
                async with http.post(f"{sim}/v1/predictions", json=body, headers={"x-api-key": "sim-key"}) as answer:
                    answer.raise_for_status()

        try:
            cpu, start = cpu_seconds(pid), time.perf_counter()
            await asyncio.gather(*(creator() for _ in range(CONCURRENCY)))
            await asyncio.wait_for(done.wait(), 600)
            return time.perf_counter() - start, cpu_seconds(pid) - cpu
        finally:
            await runner.cleanup()


def run() -> list[Row]:
    port = free_port()
    env = {**os.environ, "SIM_PORT": str(port), "SIM_DELAY_S": "0.05", "LOG_LEVEL": "WARNING"}
    logs = Path(tempfile.mkdtemp(prefix="studio-bench-sim-"))
    process = ManagedProcess.python("skytells-sim", "devstack.skytells", env=env, log_path=logs / "sim.log").start()
    rows: list[Row] = []
    try:
        sim = f"http://127.0.0.1:{port}"
        wait_until("Skytells simulator", lambda: http_ok(f"{sim}/healthz"), 30, process)
        for label, prompt in (("default image", "bench"), ("256 KiB image", "bench #sim:size=262144")):
            wall, cpu = asyncio.run(_drive(sim, process.pid, prompt))
            per_cpu_min = PREDICTIONS / max(cpu, 1e-9) * 60
            verdict = "ok" if per_cpu_min >= GOAL_PER_MIN else "MISSED"
            rows.append(Row("simulator", f"{label}: predictions/min of wall time", f"{PREDICTIONS / wall * 60:,.0f}"))
            rows.append(
                Row(
                    "simulator",
                    f"{label}: predictions/min of one core",
                    f"{per_cpu_min:,.0f}",
                    f">= {GOAL_PER_MIN:,}",
                    verdict,
                )
            )
    finally:
        process.stop()
    return rows
