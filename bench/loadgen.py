"""The HTTP load generator every HTTP benchmark shares, run as its own process (`python -m bench.loadgen`).

It speaks HTTP/1.1 over raw asyncio protocols on keep-alive loopback connections and sends requests the caller
built beforehand (signed callbacks, authenticated API calls), so it costs far less per request than any
server it drives. Two modes:

- closed: a fixed number of connections each sending its next request as soon as the last one was answered
  (the peak rate);
- open: request k is due at start + k / rate whatever the server does, and its latency counts from the moment
  it was due, not from when a connection was free, so a stalled server cannot hide its stalls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.processes import ROOT

WARMUP_SECONDS = 1.0


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
    answered: int  # every response, the warm-up's included

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


async def _load(port: int, pool: Sequence[bytes], mode: str, seconds: float, rate: float, connections: int) -> _Result:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(_Client, "127.0.0.1", port)
        clients.append(client)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    sent = 0
    started = time.perf_counter()
    warm_until = started + WARMUP_SECONDS
    stop_at = warm_until + seconds
    finished = loop.create_future()
    outstanding = 0
    answered = 0

    def record(status: int, due: float) -> None:
        nonlocal answered
        answered += 1
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
    return _Result(seconds, statuses, latencies, answered)


def write_requests(path: Path, requests: Sequence[bytes]) -> Path:
    """Store complete HTTP/1.1 requests for the load generator to send, in turn, round and round."""
    path.write_bytes(b"".join(struct.pack(">I", len(r)) + r for r in requests))
    return path


def _read_requests(path: Path) -> list[bytes]:
    raw, at, out = path.read_bytes(), 0, []
    while at < len(raw):
        (length,) = struct.unpack_from(">I", raw, at)
        out.append(raw[at + 4 : at + 4 + length])
        at += 4 + length
    return out


def http_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One complete HTTP/1.1 request on a keep-alive connection."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def measure(
    port: int, requests: Path, mode: str, seconds: float, rate: float = 0.0, connections: int = 32
) -> dict[str, Any]:
    """Drive the server on `port` from a separate process; its rate, statuses and latency percentiles."""
    argv = [sys.executable, "-m", "bench.loadgen", str(port), str(requests), mode, str(seconds), str(rate)]
    argv.append(str(connections))
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    result["statuses"] = {int(k): v for k, v in result["statuses"].items()}
    return result


def mean(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Closed-loop results of one server taken in turn with others': the mean rate and CPU per answer, the
    percentiles of the worst, the statuses and answers summed."""
    statuses: dict[int, int] = {}
    for result in results:
        for status, n in result["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    return {
        "rate": sum(r["rate"] for r in results) / len(results),
        "cpu_s": sum(r["cpu_s"] for r in results) / len(results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "statuses": statuses,
        "answered": sum(r["answered"] for r in results),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("port", type=int)
    parser.add_argument("requests", type=Path)
    parser.add_argument("mode", choices=("closed", "open"))
    parser.add_argument("seconds", type=float)
    parser.add_argument("rate", type=float)
    parser.add_argument("connections", type=int)
    args = parser.parse_args(argv)
    pool = _read_requests(args.requests)
    result = asyncio.run(_load(args.port, pool, args.mode, args.seconds, args.rate, args.connections))
    summary = {
        "rate": result.rate,
        "statuses": result.statuses,
        "p50_ms": result.percentile(0.50),
        "p99_ms": result.percentile(0.99),
        "answered": result.answered,
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
