"""Gateway throughput and latency: signed callbacks through the gateway (with publisher confirms on a real
RabbitMQ) beside a bare aiohttp app that only answers 200, driven by the same load generator in the same run.

The load generator is a separate process (`python -m bench.gateway load ...`) speaking HTTP/1.1 over raw
asyncio protocols on keep-alive loopback connections, with every request pre-built and pre-signed, so it
costs far less per request than either server. Everything is bounded in time: each measurement runs a few
seconds, and every process started here is stopped here.

Peak: closed loop, a fixed number of connections each sending its next request as soon as the last one was
answered. Latency: open loop at half the gateway's peak rate, each request's latency counted from the moment
it was due (not when a connection was free), so a stalled server cannot hide its stalls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.table import Row
from common.broker import QUEUE
from common.signing import SIGNATURE_HEADER, sign
from devstack.processes import ROOT, ManagedProcess, free_port, http_ok, wait_until
from devstack.rabbitmq import RabbitMQ

SECRET = "bench-secret"
PEAK_SECONDS = 5.0
LATENCY_SECONDS = 5.0
WARMUP_SECONDS = 1.0
CONNECTIONS = 32
RATIO_GOAL = 0.6
P99_GOAL_MS = 10.0
NAME = "gateway"


# --- load generator (runs in its own process) -----------------------------------------------------------------


def _requests(count: int) -> list[bytes]:
    """Distinct signed callbacks, as complete HTTP/1.1 requests."""
    out = []
    for n in range(count):
        body = json.dumps(
            {"id": f"pred_bench_{n:06d}", "status": "succeeded", "output": [f"https://cdn.skytells.ai/{n}.png"]}
        ).encode()
        head = (
            "POST /api/webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{SIGNATURE_HEADER}: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


class _Client(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding; `on_answer` hears each response."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.due = 0.0
        self.on_answer: Callable[[_Client, int, float], None] = lambda client, status, due: None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[end + 4 + length :]
        self.on_answer(self, status, self.due)


@dataclass
class _Result:
    seconds: float
    statuses: dict[int, int]
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


async def _load(port: int, mode: str, seconds: float, rate: float, connections: int) -> _Result:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(_Client, "127.0.0.1", port)
        clients.append(client)
    pool = _requests(4096)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    sent = 0
    started = time.perf_counter()
    warm_until = started + WARMUP_SECONDS
    stop_at = warm_until + seconds
    finished = loop.create_future()
    outstanding = 0

    def record(status: int, due: float) -> None:
        now = time.perf_counter()
        if warm_until <= due < stop_at:
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append((now - due) * 1000)

    def fire(client: _Client, due: float) -> None:
        nonlocal sent, outstanding
        client.send(pool[sent % len(pool)], due)
        sent += 1
        outstanding += 1

    if mode == "closed":
        # Each connection sends its next request the moment the previous one is answered.
        def closed_answer(client: _Client, status: int, due: float) -> None:
            nonlocal outstanding
            outstanding -= 1
            record(status, due)
            now = time.perf_counter()
            if now < stop_at:
                fire(client, now)
            elif outstanding == 0 and not finished.done():
                finished.set_result(None)

        for client in clients:
            client.on_answer = closed_answer
            fire(client, time.perf_counter())
        await finished
    else:
        # Open loop: request k is due at started + k / rate, whatever the server does meanwhile.
        idle = list(clients)
        backlog: list[float] = []
        total = int((WARMUP_SECONDS + seconds) * rate)
        scheduled = 0

        def open_answer(client: _Client, status: int, due: float) -> None:
            nonlocal outstanding
            outstanding -= 1
            record(status, due)
            if backlog:
                fire(client, backlog.pop(0))
            else:
                idle.append(client)
            if scheduled == total and outstanding == 0 and not backlog and not finished.done():
                finished.set_result(None)

        for client in clients:
            client.on_answer = open_answer
        while scheduled < total:
            now = time.perf_counter()
            while scheduled < total and started + scheduled / rate <= now:
                backlog.append(started + scheduled / rate)
                scheduled += 1
            while backlog and idle:
                fire(idle.pop(), backlog.pop(0))
            await asyncio.sleep(max(0.0, started + scheduled / rate - time.perf_counter()))
        if outstanding or backlog:
            await finished
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    return _Result(seconds, statuses, latencies)


def _load_main(args: argparse.Namespace) -> None:
    result = asyncio.run(_load(args.port, args.mode, args.seconds, args.rate, args.connections))
    summary = {
        "rate": result.rate,
        "statuses": result.statuses,
        "p50_ms": result.percentile(0.50),
        "p99_ms": result.percentile(0.99),
    }
    sys.stdout.write(json.dumps(summary) + "\n")


def _measure(port: int, mode: str, seconds: float, rate: float = 0.0) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.gateway", "load", str(port), mode, str(seconds), str(rate), str(CONNECTIONS)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    result["statuses"] = {int(k): v for k, v in result["statuses"].items()}
    return result


# --- the servers under test ------------------------------------------------------------------------------------


def _bare_main(port: int) -> None:
    """The baseline: an aiohttp app that reads the body and answers what the gateway answers, doing nothing."""
    from aiohttp import web

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/webhooks", receive)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


@contextmanager
def _process(name: str, argv: list[str], env: dict[str, str], work: Path, ready_url: str) -> Iterator[None]:
    process = ManagedProcess(name, argv, env=env, log_path=work / f"{name}.log").start()
    try:
        wait_until(name, lambda: http_ok(ready_url), 60, process)
        yield
    finally:
        process.stop()


def _queue_depth(url: str) -> int:
    async def depth() -> int:
        import aio_pika

        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(QUEUE, passive=True)
            count = queue.declaration_result.message_count
            return int(count or 0)

    return asyncio.run(depth())


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def run() -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="studio-bench-gateway-"))
    rabbit = RabbitMQ(
        f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    ).start()  # its own temp dir, readable by `rabbitmq`
    try:
        bare_port, gateway_port = free_port(), free_port()
        env = {
            **os.environ,
            "AMQP_URL": rabbit.url,
            "WEBHOOK_PORT": str(gateway_port),
            "SKYTELLS_WEBHOOK_SECRET": SECRET,
            "LOG_LEVEL": "INFO",
        }
        bare_argv = [sys.executable, "-m", "bench.gateway", "bare", str(bare_port)]
        with _process("bare", bare_argv, env, work, f"http://127.0.0.1:{bare_port}/healthz"):
            bare = _measure(bare_port, "closed", PEAK_SECONDS)
        gateway_argv = [sys.executable, "-m", "services.webhook"]
        with _process("gateway", gateway_argv, env, work, f"http://127.0.0.1:{gateway_port}/readyz"):
            peak = _measure(gateway_port, "closed", PEAK_SECONDS)
            half = peak["rate"] / 2
            steady = _measure(gateway_port, "open", LATENCY_SECONDS, half)
        queued = _queue_depth(rabbit.url)
    finally:
        rabbit.stop()
    accepted = peak["statuses"].get(200, 0) + steady["statuses"].get(200, 0)
    ratio = peak["rate"] / bare["rate"] if bare["rate"] else 0.0
    refused = sum(v for k, v in {**peak["statuses"]}.items() if k != 200) + sum(
        v for k, v in steady["statuses"].items() if k != 200
    )
    return [
        Row(NAME, f"bare aiohttp, answers 200 (closed loop, {CONNECTIONS} conns)", f"{bare['rate']:,.0f} req/s"),
        Row(NAME, "gateway: signed callbacks, confirmed in RabbitMQ", f"{peak['rate']:,.0f} req/s"),
        Row(NAME, "gateway / bare", f"{ratio:.2f}", f">= {RATIO_GOAL}", "ok" if ratio >= RATIO_GOAL else "MISSED"),
        Row(NAME, "gateway p50 at peak", _ms(peak["p50_ms"])),
        Row(NAME, "gateway p99 at peak", _ms(peak["p99_ms"])),
        Row(NAME, f"gateway p50 at half peak ({half:,.0f} req/s, open loop)", _ms(steady["p50_ms"])),
        Row(
            NAME,
            f"gateway p99 at half peak ({half:,.0f} req/s, open loop)",
            _ms(steady["p99_ms"]),
            f"< {P99_GOAL_MS:g} ms",
            "ok" if steady["p99_ms"] < P99_GOAL_MS else "MISSED",
        ),
        Row(NAME, "gateway answers other than 200", str(refused), "0", "ok" if refused == 0 else "MISSED"),
        Row(
            NAME,
            "events in the queue / callbacks answered 200 (measured)",
            f"{queued} / {accepted}",
            "queued >= 200s",
            "ok" if queued >= accepted else "MISSED",
        ),
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="the load generator (internal)")
    load.add_argument("port", type=int)
    load.add_argument("mode", choices=("closed", "open"))
    load.add_argument("seconds", type=float)
    load.add_argument("rate", type=float)
    load.add_argument("connections", type=int)
    bare = sub.add_parser("bare", help="the bare aiohttp baseline (internal)")
    bare.add_argument("port", type=int)
    args = parser.parse_args(argv)
    if args.command == "load":
        _load_main(args)
    else:
        _bare_main(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
