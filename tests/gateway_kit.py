"""Gateways of their own, pointed at a broker of their own, for the durability tests: starting one, posting it
signed callbacks, reading what reached the queue, and a TCP proxy that holds back the broker's confirms."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aio_pika
import httpx

from common.topology import QUEUE
from devstack.processes import ManagedProcess, free_port
from devstack.stack import Stack
from tests.helpers import eventually, signed_callback

NEW_KEY, OLD_KEY = "new-key-0123456789", "old-key-0123456789"


@dataclass
class Gateway:
    process: ManagedProcess
    url: str


def start_gateway(stack: Stack, amqp_url: str) -> Gateway:
    """A webhook process of our own; not waited for, since its broker may be down (or behind our proxy)."""
    port = free_port()
    env = {"AMQP_URL": amqp_url, "WEBHOOK_PORT": str(port), "SKYTELLS_WEBHOOK_SECRET": f"{NEW_KEY},{OLD_KEY}"}
    process = stack.start_service("webhook", env=env, label=f"webhook-{port}", wait=False)
    return Gateway(process, f"http://127.0.0.1:{port}")


async def answers(url: str, path: str, status: int) -> bool:
    # A fresh connection each time: a kept-alive one would hide a listener that stopped accepting.
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(url + path)).status_code == status
    except httpx.TransportError:
        return False


async def refuses_connections(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            await client.get(url + "/healthz")
    except httpx.ConnectError:
        return True
    return False


@contextlib.asynccontextmanager
async def ready_gateway(stack: Stack, amqp_url: str) -> AsyncIterator[Gateway]:
    gw = start_gateway(stack, amqp_url)
    try:
        await eventually("the gateway to be ready", lambda: answers(gw.url, "/readyz", 200))
        yield gw
    finally:
        gw.process.stop()


def callback(prediction_id: str, status: str = "succeeded", key: str = NEW_KEY) -> tuple[bytes, dict[str, str]]:
    payload = {"id": prediction_id, "status": status, "output": [f"https://cdn.skytells.ai/{prediction_id}.png"]}
    return signed_callback(payload, key)


async def post(client: httpx.AsyncClient, url: str, prediction_id: str, key: str = NEW_KEY) -> httpx.Response:
    body, headers = callback(prediction_id, key=key)
    return await client.post(f"{url}/api/webhooks", content=body, headers=headers)


def new_id() -> str:
    return f"pred_{uuid.uuid4().hex[:16]}"


@contextlib.asynccontextmanager
async def amqp_channel(url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def queued_prediction_ids(url: str) -> list[str]:
    """Drain `studio.persister` (nobody else consumes it on this broker) and return the prediction ids in it."""
    async with amqp_channel(url) as channel:
        queue = await channel.declare_queue(QUEUE, passive=True)
        depth = queue.declaration_result.message_count
        ids = []
        for _ in range(depth):
            message = await queue.get(no_ack=True, timeout=10)
            assert message is not None
            ids.append(json.loads(message.body)["predictionId"])
        return ids


class PausableProxy:
    """TCP proxy to RabbitMQ; `pause()` holds back everything the broker sends, so confirms never arrive."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> PausableProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def pause(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        for task in (self._pump(client_r, broker_w, None), self._pump(broker_r, client_w, self.flowing)):
            spawned = asyncio.create_task(task)
            self.tasks.add(spawned)
            spawned.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None) -> None:
        try:
            while data := await src.read(65536):
                if gate is not None:
                    await gate.wait()
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass
class Tally:
    """The prediction ids of a stream of callbacks by answer: 200, 503 with Retry-After, anything else (its status
    or error)."""

    prefix: str
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=itertools.count)

    async def send(self, client: httpx.AsyncClient, url: str, stop: asyncio.Event, pause_s: float) -> None:
        """Post signed callbacks with fresh prediction ids until `stop`, tallying every answer; a refusal pauses
        this sender for `pause_s` (a few hundred while the broker is away, not thousands)."""
        while not stop.is_set():
            pid = f"{self.prefix}{next(self.ids):05d}"
            try:
                response = await post(client, url, pid)
            except httpx.HTTPError as exc:
                self.other.append((pid, repr(exc)))
                continue
            if response.status_code == 200:
                self.accepted.append(pid)
            elif response.status_code == 503 and response.headers.get("Retry-After"):
                self.refused.append(pid)
                await asyncio.sleep(pause_s)
            else:
                self.other.append((pid, str(response.status_code)))
