"""Gateway throughput and latency against its yardstick, measured in the same run on the same RabbitMQ.

- yardstick: a bare aiohttp app that publishes each callback's event through the same library's public API
  (aio-pika's `Exchange.publish`, on a channel opened by `Broker.connect`: confirms, `mandatory`, returns
  raising) and answers 200 once it is confirmed, with none of the gateway's own work. The gateway is held to
  0.75 of it: what is left between them is Studio's own cost.
- gateway: signed callbacks through `services.webhook`, each answered 200 only after RabbitMQ confirmed it,
  driven by `bench.loadgen` (closed loop for the peak, open loop for the latency at 25%, 50% and 90% of it;
  p99 under 10 ms at 25% and 50%).
- for scale: the same events published with no HTTP in front (`bench.publish`) through aio-pika and through
  aiormq beneath it; the bare app publishing through aiormq; a bare app that only answers 200.

Every process started here is stopped here; each measurement lasts a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import loadgen, publish
from bench.proc import cpu_seconds
from bench.table import Row, quick, verdict
from common.process import event_loop
from common.settings import Settings
from common.signing import SIGNATURE_HEADER, sign
from common.topology import QUEUE
from devstack.processes import ManagedProcess, free_port, http_ok, wait_until
from devstack.rabbitmq import RabbitMQ

SECRET = "bench-webhook-secret"
SECONDS = 3.0 if quick() else 5.0
CONNECTIONS = 32
RATIO_GOAL = 0.75  # of the bare aiohttp app publishing through aio-pika
P99_GOAL_MS = 10.0
LOADS = (0.25, 0.5, 0.9)  # fractions of the peak at which latency is measured
P99_GOAL_LOADS = (0.25, 0.5)
ROUNDS = 2  # of the yardstick and the gateway, measured in turn
NAME = "gateway"
BARE_LAYERS = ("aio-pika", "aiormq")  # the bare app publishing through each library
YARDSTICK = "aio-pika"  # the gateway's own library and call
_BARE_NAMES = {"aio-pika": "aio-pika's publish (the gateway's path)", "aiormq": "aiormq's publish"}


def _callbacks(work: Path) -> Path:
    """Distinct signed callbacks as complete HTTP requests, the same ones the publish loops publish as events."""
    requests = []
    for n in range(4096):
        body = json.dumps(publish.callback(n)).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, SECRET)}
        requests.append(loadgen.http_request("POST", "/api/webhooks", headers, body))
    return loadgen.write_requests(work / "callbacks.bin", requests)


def _bare_main(port: int, url: str | None = None, layer: str | None = None) -> None:
    """The bare baselines: an aiohttp app that reads the body and answers what the gateway answers; given a
    RabbitMQ `url` and a publish `layer`, it first publishes the next prebuilt event as the ceiling's loop does
    and waits for the confirm. No signature, parsing, middleware or log line: HTTP and the library alone."""
    import aiormq
    from aiohttp import web

    from common.broker import Broker

    broker_key = web.AppKey("broker", Broker)
    publish_key: web.AppKey[publish.Publish] = web.AppKey("publish")
    sent = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal sent
        await request.read()
        if layer is not None:
            sent += 1
            if not isinstance(await request.app[publish_key](sent), aiormq.spec.Basic.Ack):
                return web.Response(status=503)
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broker(app: web.Application) -> AsyncIterator[None]:
        if url is not None and layer is not None:
            app[broker_key] = await Broker.connect(url)
            app[publish_key] = publish.publisher(app[broker_key], layer)
        yield
        if broker_key in app:
            await app[broker_key].close()

    app = web.Application()
    app.cleanup_ctx.append(broker)
    app.router.add_post("/api/webhooks", receive)
    app.router.add_get("/healthz", healthz)
    loop = event_loop(Settings.from_env(os.environ).uvloop)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=loop)


@contextmanager
def serving(name: str, argv: list[str], env: dict[str, str], work: Path, ready_url: str) -> Iterator[ManagedProcess]:
    process = ManagedProcess(name, argv, env=env, log_path=work / f"{name}.log").start()
    try:
        wait_until(name, lambda: http_ok(ready_url), 60, process)
        yield process
    finally:
        process.stop()


def _queue(url: str) -> int:
    """Messages in the persister's queue."""

    async def depth() -> int:
        import aio_pika

        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(QUEUE, passive=True)
            return int(queue.declaration_result.message_count or 0)

    return asyncio.run(depth())


def _peak(port: int, requests: Path, pid: int) -> dict[str, Any]:
    """The closed loop's result, with the serving process's CPU seconds per answer."""
    cpu = cpu_seconds(pid)
    result = loadgen.measure(port, requests, "closed", SECONDS, connections=CONNECTIONS)
    result["cpu_s"] = (cpu_seconds(pid) - cpu) / max(1, result["answered"])
    return result


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def run() -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="studio-bench-gateway-"))
    rabbit = RabbitMQ(f"amqp://guest:guest@127.0.0.1:{free_port()}/").start()
    try:
        requests = _callbacks(work)
        bare_port, gateway_port = free_port(), free_port()
        env = {
            **os.environ,
            "AMQP_URL": rabbit.url,
            "WEBHOOK_PORT": str(gateway_port),
            "SKYTELLS_WEBHOOK_SECRET": SECRET,
            "LOG_LEVEL": "INFO",
        }
        ceilings = {layer: publish.measure(rabbit.url, SECONDS, CONNECTIONS, layer) for layer in publish.LAYERS}
        bare: dict[str | None, dict[str, Any]] = {}
        for layer in (None, *(name for name in BARE_LAYERS if name != YARDSTICK)):
            bare_argv = [sys.executable, "-m", "bench.gateway", str(bare_port)]
            if layer is not None:
                bare_argv += [rabbit.url, layer]
            with serving("bare", bare_argv, env, work, f"http://127.0.0.1:{bare_port}/healthz") as server:
                bare[layer] = _peak(bare_port, requests, server.pid)
        yardstick_argv = [sys.executable, "-m", "bench.gateway", str(bare_port), rabbit.url, YARDSTICK]
        gateway_argv = [sys.executable, "-m", "services.webhook"]
        with (
            serving("bare", yardstick_argv, env, work, f"http://127.0.0.1:{bare_port}/healthz") as yardstick,
            serving("gateway", gateway_argv, env, work, f"http://127.0.0.1:{gateway_port}/readyz") as gateway,
        ):
            # The two in turn, a few times: the shared machine's load drifts, and each pair sees it alike.
            pairs, queued = [], 0
            for _ in range(ROUNDS):
                yardstick_peak = _peak(bare_port, requests, yardstick.pid)
                before = _queue(rabbit.url)
                pairs.append((yardstick_peak, _peak(gateway_port, requests, gateway.pid)))
                queued += _queue(rabbit.url) - before
            bare[YARDSTICK] = loadgen.mean([yardstick_peak for yardstick_peak, _ in pairs])
            peak = loadgen.mean([gateway_peak for _, gateway_peak in pairs])
            before = _queue(rabbit.url)
            steady = {
                share: loadgen.measure(gateway_port, requests, "open", SECONDS, peak["rate"] * share, CONNECTIONS)
                for share in LOADS
            }
            queued += _queue(rabbit.url) - before
        floor = publish.latency(rabbit.url, SECONDS, peak["rate"] * 0.5)
    finally:
        rabbit.stop()
    return _rows(bare, ceilings, peak, steady, queued, floor)


def _rows(
    bare: dict[str | None, dict[str, Any]],
    ceilings: dict[str, tuple[float, float]],
    peak: dict[str, Any],
    steady: dict[float, Any],
    queued: int,
    floor: tuple[float, float],
) -> list[Row]:
    libraries = {name: result for name, result in ceilings.items() if name in publish.LIBRARIES}
    layer, (ceiling, ceiling_cpu_s) = max(libraries.items(), key=lambda item: item[1][0])
    yardstick = bare[YARDSTICK]
    ratio = peak["rate"] / yardstick["rate"] if yardstick["rate"] else 0.0
    runs = [peak, *steady.values()]
    accepted = sum(r["statuses"].get(200, 0) for r in runs)
    refused = sum(v for r in runs for k, v in r["statuses"].items() if k != 200)
    rows = [
        Row(
            NAME,
            f"bare aiohttp answering 200 (closed loop, {CONNECTIONS} conns), for scale",
            _rate(bare[None]["rate"]),
        ),
        *(
            Row(NAME, f"confirmed publishes via {name}, no HTTP ({CONNECTIONS} publishers), for scale", _rate(r))
            for name, (r, _) in libraries.items()
        ),
        # What HTTP and a library's publish reach with none of the gateway's own work; the one through the
        # gateway's own library is its yardstick.
        *(
            Row(
                NAME,
                f"bare aiohttp + {_BARE_NAMES[name]}, no signature, parsing, middleware or log line",
                f"{_rate(bare[name]['rate'])} = {bare[name]['rate'] / ceiling if ceiling else 0.0:.2f} of the "
                f"{layer} loop, {_us(bare[name]['cpu_s'])} CPU each",
            )
            for name in BARE_LAYERS
        ),
        Row(NAME, "gateway: signed callbacks confirmed in RabbitMQ (peak)", _rate(peak["rate"])),
        Row(
            NAME,
            f"gateway / bare aiohttp + {_BARE_NAMES[YARDSTICK]}",
            f"{ratio:.2f}",
            f">= {RATIO_GOAL}",
            verdict(ratio >= RATIO_GOAL),
        ),
        Row(
            NAME,
            f"gateway / {layer} publish loop with no HTTP, for scale",
            f"{peak['rate'] / ceiling if ceiling else 0.0:.2f}",
        ),
        Row(NAME, "gateway p50 / p99 at peak", f"{_ms(peak['p50_ms'])} / {_ms(peak['p99_ms'])}"),
        # CPU per message tells the code's cost apart from the shared machine's: throughput also pays for
        # every wake-up the other processes delay (see the README's bench section).
        Row(
            NAME,
            f"CPU per callback: gateway / bare + {YARDSTICK} / {layer} publish loop",
            f"{_us(peak['cpu_s'])} / {_us(yardstick['cpu_s'])} / {_us(ceiling_cpu_s)}",
        ),
    ]
    for share, result in steady.items():
        metric = f"gateway p50 / p99 at {share:.0%} of peak ({result['rate']:,.0f} req/s, open loop)"
        if share in P99_GOAL_LOADS:
            p99 = result["p99_ms"]
            goal = f"p99 < {P99_GOAL_MS:g} ms"
            rows.append(Row(NAME, metric, f"{_ms(result['p50_ms'])} / {_ms(p99)}", goal, verdict(p99 < P99_GOAL_MS)))
        else:
            rows.append(Row(NAME, metric, f"{_ms(result['p50_ms'])} / {_ms(result['p99_ms'])}"))
    rows.append(
        Row(
            NAME,
            f"the same publishes at 50% of peak with no HTTP: RabbitMQ's own p50 / p99 ({peak['rate'] * 0.5:,.0f}/s)",
            f"{_ms(floor[0])} / {_ms(floor[1])}",
        )
    )
    rows.append(Row(NAME, "gateway answers other than 200", str(refused), "0", verdict(refused == 0)))
    rows.append(
        Row(
            NAME,
            "events in the queue / callbacks answered 200",
            f"{queued} / {accepted}",
            "queued >= 200s",
            verdict(queued >= accepted),
        )
    )
    return rows


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us"


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


if __name__ == "__main__":  # a bare baseline server: python -m bench.gateway PORT [AMQP_URL LAYER]
    _bare_main(int(sys.argv[1]), *sys.argv[2:4])
