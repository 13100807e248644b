"""Live updates: what a client sees of a generation, and how each change of one reaches every API replica.

    API (create, cancel) --+                                      +--> API replica 1: queue studio.updates.<id1>
                           +--> studio.updates (topic) --#--------+--> API replica 2: queue studio.updates.<id2>
    persister (each write)-+      routing key generation.<status>      (exclusive, auto-delete: gone with it)

An update is a notification, not a record: the database stays the truth, and API replicas re-read what their
open streams watch every few seconds, so a lost update only delays an event. Hence publishing is
fire-and-forget: no publisher confirms (a confirm costs a broker round trip per write and would make the
persister's work wait on RabbitMQ), transient messages, and a bounded in-memory queue drained by one task, so
`notify` never awaits and never fails the write it follows. While RabbitMQ is away, updates are dropped and
counted (`studio_updates_dropped_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from prometheus_client import Counter

from common.db.generations import Generation
from common.predictions import TERMINAL, Status

logger = logging.getLogger(__name__)

EXCHANGE = "studio.updates"
PUBLISH_TIMEOUT_S = 1.0
QUEUE_LIMIT = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

UPDATES_PUBLISHED = Counter("studio_updates_published_total", "Generation updates handed to RabbitMQ")
UPDATES_DROPPED = Counter(
    "studio_updates_dropped_total", "Generation updates not published (RabbitMQ away or too slow); streams re-read"
)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def generation_json(generation: Generation) -> dict[str, Any]:
    """The generation object of the public API."""
    return {
        "id": str(generation.id),
        "status": generation.status,
        "model": generation.model,
        "prompt": generation.prompt,
        "outputUrl": generation.output_url,
        "outputUrls": list(generation.output_urls),
        "error": generation.error,
        "webhook": generation.webhook,
        "webhookEventsFilter": list(generation.webhook_events),
        "createdAt": _iso(generation.created_at),
        "completedAt": _iso(generation.completed_at),
    }


def version_of(moment: datetime) -> int:
    """A change's position: its `updated_at` in microseconds. The event id of streams, and their resume point."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def moment_of(version: int) -> datetime:
    """The moment a version stands for; OverflowError for one no datetime can hold."""
    return _EPOCH + timedelta(microseconds=version)


def progress(status: str) -> int:
    """How far along a status is; a generation only moves forward, so an update that ranks lower is stale."""
    return 2 if status in TERMINAL else 1 if status == Status.PROCESSING else 0


@dataclass(frozen=True)
class Update:
    user_id: str
    generation_id: str
    status: str
    version: int
    generation: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def progress(self) -> int:
        return progress(self.status)

    @cached_property
    def data(self) -> bytes:
        """The generation object as one line of JSON, encoded once however many streams send it."""
        return json.dumps(self.generation, separators=(",", ":")).encode()

    @classmethod
    def of(cls, generation: Generation) -> Update:
        body = generation_json(generation)
        return cls(generation.user_id, body["id"], generation.status, version_of(generation.updated_at), body)

    def to_json(self) -> bytes:
        body = {"userId": self.user_id, "version": self.version, "generation": self.generation}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Update:
        """Raises ValueError on anything that is not an update."""
        try:
            body = json.loads(raw)
            generation = body["generation"]
            update = cls(
                str(body["userId"]), str(generation["id"]), str(generation["status"]), int(body["version"]), generation
            )
        except (KeyError, TypeError, RecursionError) as exc:
            raise ValueError(f"malformed update: {exc!r}") from None
        if not isinstance(generation, dict):
            raise ValueError("malformed update: generation is not an object")
        return update


async def declare_exchange(channel: AbstractChannel) -> AbstractExchange:
    # Durable, so publishers keep a valid target across a broker restart before any API replica re-declares it.
    return await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


Notify = Callable[[Generation | None], None]


def ignore_change(generation: Generation | None) -> None:
    """A `Notify` for code run without live updates (tools, tests of one part)."""


class UpdatePublisher:
    """Publishes generation changes to `studio.updates` without ever making the caller wait."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Update] = asyncio.Queue(QUEUE_LIMIT)
        self._exchange: AbstractExchange | None = None
        self._channel: AbstractChannel | None = None
        self._task: asyncio.Task[None] | None = None

    async def attach(self, connection: AbstractConnection) -> None:
        """Publish over this connection from now on (the API attaches once RabbitMQ answers)."""
        channel = await connection.channel(publisher_confirms=False)
        self._exchange = await declare_exchange(channel)
        self._channel = channel

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def notify(self, generation: Generation | None) -> None:
        """Announce a committed change (None, for "nothing changed", is ignored). Never blocks, never raises."""
        if generation is None:
            return
        try:
            self._queue.put_nowait(Update.of(generation))
        except asyncio.QueueFull:
            UPDATES_DROPPED.inc()

    async def _run(self) -> None:
        while True:
            update = await self._queue.get()
            try:
                await self._publish(update)
            finally:
                self._queue.task_done()

    async def _publish(self, update: Update) -> None:
        channel, exchange = self._channel, self._exchange
        if channel is None or exchange is None or channel.is_closed:  # not connected: drop now, do not queue up
            UPDATES_DROPPED.inc()
            return
        message = aio_pika.Message(
            update.to_json(), content_type="application/json", delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        try:
            # A robust channel that is reconnecting would hold the publish until it is back.
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                # Not mandatory: with no API replica listening, RabbitMQ would return every update, and aiormq
                # log each return as an error carrying the whole body.
                await exchange.publish(message, f"generation.{update.status}", mandatory=False)
        except Exception as exc:  # a notification: the streams' periodic re-read makes up for it
            UPDATES_DROPPED.inc()
            logger.debug("update not published: %r", exc)
            return
        UPDATES_PUBLISHED.inc()

    async def close(self, drain_s: float = 2.0) -> None:
        """Publish what is queued (for at most `drain_s`), then stop."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_s):
                    await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
