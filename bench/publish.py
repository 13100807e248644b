"""The gateway's ceiling: the same events published with the same channel settings, and no HTTP in front.

Run as its own process (`python -m bench.publish URL SECONDS CONCURRENCY LAYER`), on the event loop the
services use, through `Broker.connect` (robust connection, publisher confirms, return-raising channel, the
declared topology). As many publishers as the load generator has connections each publish an event, wait
for RabbitMQ's confirm, and publish the next. Events are built beforehand: building them is the gateway's
work, not the library's.

Two library layers are measured, and the faster is the ceiling: aio-pika's `Exchange.publish` (the gateway's
own path), and aiormq's `basic_publish` underneath it (without waiting for a drain: the confirm says more).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aio_pika
import aiormq

from common.broker import Broker
from common.events import PredictionEvent
from common.predictions import SkytellsStatus, parse_prediction
from common.process import event_loop
from common.settings import Settings
from common.topology import EXCHANGE
from devstack.processes import ROOT

WARMUP_SECONDS = 1.0
LIBRARIES = ("aio-pika", "aiormq")
LAYERS = LIBRARIES


def callback(n: int) -> dict[str, Any]:
    """The n-th callback the gateway benchmark sends (the ceiling publishes the events made from them)."""
    return {
        "id": f"pred_bench_{n:06d}",
        "status": SkytellsStatus.SUCCEEDED,
        "output": [f"https://cdn.skytells.ai/{n}.png"],
    }


Publish = Callable[[int], Coroutine[Any, Any, object]]


def publisher(broker: Broker, layer: str) -> Publish:
    """Publish the n-th event; bodies and AMQP properties are ready beforehand, only the library's work is left."""
    events = [PredictionEvent.from_prediction(parse_prediction(callback(n)), "webhook") for n in range(4096)]
    bodies = [(event.to_json(), event.routing_key, event.event_id) for event in events]
    if layer == "aio-pika":

        async def via_aio_pika(n: int) -> object:
            body, routing_key, message_id = bodies[n % len(bodies)]
            message = aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
            )
            return await broker.exchange.publish(message, routing_key, mandatory=True)

        return via_aio_pika

    properties = [
        aiormq.spec.Basic.Properties(
            content_type="application/json", delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT), message_id=message_id
        )
        for _, _, message_id in bodies
    ]

    async def via_aiormq(n: int) -> object:
        channel = await broker.channel.get_underlay_channel()
        assert isinstance(channel, aiormq.Channel)  # its `wait` is not on the abstract class
        body, routing_key, _ = bodies[n % len(bodies)]
        properties_n = properties[n % len(bodies)]
        return await channel.basic_publish(
            body, exchange=EXCHANGE, routing_key=routing_key, properties=properties_n, mandatory=True, wait=False
        )

    return via_aiormq


async def _loop(url: str, seconds: float, concurrency: int, layer: str) -> tuple[float, float]:
    """Confirmed publishes per second, and CPU seconds of this process per publish (warm-up included)."""
    broker = await Broker.connect(url)
    publish = publisher(broker, layer)
    counted = total = 0
    cpu = time.process_time()
    started = time.perf_counter()
    warm_until, stop_at = started + WARMUP_SECONDS, started + WARMUP_SECONDS + seconds

    async def worker(offset: int) -> None:
        nonlocal counted, total
        n = offset
        while (now := time.perf_counter()) < stop_at:
            confirmation = await publish(n)
            if not isinstance(confirmation, aiormq.spec.Basic.Ack):
                raise RuntimeError(f"RabbitMQ did not confirm: {confirmation!r}")
            total += 1
            if now >= warm_until:
                counted += 1
            n += concurrency

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        cpu = time.process_time() - cpu
    finally:
        await broker.close()
    return counted / seconds, cpu / max(1, total)


async def _open_loop(url: str, seconds: float, rate: float, layer: str) -> dict[str, float]:
    """Latency percentiles of publishes due at `rate` a second, each counted from when it was due: RabbitMQ's own
    confirm latency at that load, the floor under the gateway's."""
    broker = await Broker.connect(url)
    publish = publisher(broker, layer)
    latencies: list[float] = []
    started = time.perf_counter()
    warm_until = started + WARMUP_SECONDS
    total = int((WARMUP_SECONDS + seconds) * rate)

    async def one(n: int, due: float) -> None:
        await publish(n)
        if due >= warm_until:
            latencies.append((time.perf_counter() - due) * 1000)

    pending = []
    try:
        for n in range(total):
            due = started + n / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            pending.append(asyncio.ensure_future(one(n, due)))
        await asyncio.gather(*pending)
    finally:
        await broker.close()
    latencies.sort()
    return {"p50_ms": latencies[len(latencies) // 2], "p99_ms": latencies[int(len(latencies) * 0.99)]}


def latency(url: str, seconds: float, rate: float, layer: str = "aio-pika") -> tuple[float, float]:
    """p50 and p99 in ms of confirmed publishes at `rate` through `layer`, from a separate process."""
    argv = [sys.executable, "-m", "bench.publish", url, str(seconds), "0", layer, str(rate)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=True)
    result = json.loads(done.stdout)
    return float(result["p50_ms"]), float(result["p99_ms"])


def measure(url: str, seconds: float, concurrency: int, layer: str) -> tuple[float, float]:
    """Confirmed publishes per second through `layer`, and CPU seconds per publish, from a separate process."""
    argv = [sys.executable, "-m", "bench.publish", url, str(seconds), str(concurrency), layer]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=True)
    result = json.loads(done.stdout)
    return float(result["rate"]), float(result["cpu_s"])


def main(argv: list[str]) -> int:
    """`URL SECONDS CONCURRENCY LAYER`: the closed loop's rate; with a fifth argument RATE, the open loop's latency."""
    url, seconds, concurrency, layer = argv[0], float(argv[1]), int(argv[2]), argv[3]
    if layer not in LAYERS:
        raise SystemExit(f"layer must be one of {LAYERS}")
    loop = event_loop(Settings.from_env(os.environ).uvloop)
    try:
        if len(argv) > 4:
            result = loop.run_until_complete(_open_loop(url, seconds, float(argv[4]), layer))
        else:
            rate, cpu_s = loop.run_until_complete(_loop(url, seconds, concurrency, layer))
            result = {"rate": rate, "cpu_s": cpu_s}
    finally:
        loop.close()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
