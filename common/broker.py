"""RabbitMQ topology and the confirming publisher (docs/architecture.md has the whole event flow).

    studio.predictions (topic) --prediction.#--> studio.persister (quorum)
                                                    | rejected / over delivery limit
                                                    v
    studio.persister.delay.<ms> (quorum, TTL) --> studio.persister.dead (quorum)
        ^ persister republishes a failed event      (`redrive` moves it back)
        | with x-attempt + 1; on expiry the delay queue dead-letters it back to studio.persister

Every queue is quorum with at-least-once dead-lettering and `reject-publish` overflow, so neither a full
queue nor a dead-letter hop ever drops a message silently. Publishing uses publisher confirms with
`mandatory=True` and `on_return_raises=True`: a message nobody routes is an error, not a silent drop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
)

from common.errors import BrokerUnavailable
from common.events import PredictionEvent
from common.settings import Settings

EXCHANGE = "studio.predictions"
QUEUE = "studio.persister"
DEAD_QUEUE = "studio.persister.dead"
DELAY_QUEUE_PREFIX = "studio.persister.delay."
ATTEMPT_HEADER = "x-attempt"
# Why a message is in the dead-letter queue, for whoever has to decide what to do with it (`redrive list`).
DEAD_REASON_HEADER = "x-dead-reason"
DEAD_ATTEMPTS_HEADER = "x-attempts"
FIRST_FAILURE_HEADER = "x-first-failure-at"  # ISO-8601; carried by every retry copy from the first failure on
LAST_FAILURE_HEADER = "x-last-failure-at"
PUBLISH_TIMEOUT_S = 5.0
# How often a robust connection retries after losing RabbitMQ (aio-pika's default, 5 s, keeps callbacks
# answered 503 for seconds after the broker is back), and how long one connection attempt may take.
RECONNECT_INTERVAL_S = 1.0
CONNECT_TIMEOUT_S = 10.0
BLOCKED_PROBE_S = 0.2

_QUORUM: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


@dataclass(frozen=True)
class RetrySchedule:
    """The persister's retry delays: `long` for storage, database and unexpected failures, `download` for failed
    downloads (squeezed into DOWNLOAD_RETRY_WINDOW_S). Every process declares a delay queue for each of `all`."""

    long: tuple[float, ...]
    download: tuple[float, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySchedule:
        base, ceiling, attempts = settings.retry_base_s, settings.retry_max_s, settings.persister_max_attempts
        return cls(
            long=tuple(retry_delays(base, ceiling, attempts)),
            download=tuple(download_retry_delays(base, ceiling, attempts, settings.download_retry_window_s)),
        )

    @property
    def all(self) -> tuple[float, ...]:
        return tuple(sorted(set(self.long) | set(self.download)))


def retry_delays(base_s: float, max_s: float, max_attempts: int) -> list[float]:
    """Delay before attempt 2, 3, ... max_attempts: base doubling, capped at max_s."""
    return [min(base_s * 2**n, max_s) for n in range(max(0, max_attempts - 1))]


def download_retry_delays(base_s: float, max_s: float, max_attempts: int, window_s: float) -> list[float]:
    """Delays for a failed download: base doubling like `retry_delays`, under a ceiling low enough that the whole
    schedule fits in `window_s` (the CDN deletes outputs a few minutes after completion, so later retries are
    pointless). Storage and database failures keep the longer `retry_delays` schedule."""
    delays = retry_delays(base_s, max_s, max_attempts)
    if sum(delays) <= window_s or not delays:
        return delays
    low, high = 0.0, max_s
    for _ in range(60):  # bisect the ceiling; the sum is monotonic in it
        ceiling = (low + high) / 2
        if sum(min(d, ceiling) for d in delays) <= window_s:
            low = ceiling
        else:
            high = ceiling
    return [round(min(d, low), 3) for d in delays]


def delay_queue_name(delay_s: float) -> str:
    return f"{DELAY_QUEUE_PREFIX}{int(round(delay_s * 1000))}ms"


async def declare_topology(channel: AbstractChannel, delays: Sequence[float]) -> AbstractExchange:
    """Declare exchange and queues; idempotent, so every process may do it at start."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    await channel.declare_queue(DEAD_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    queue = await channel.declare_queue(
        QUEUE,
        durable=True,
        arguments={
            **_QUORUM,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": DEAD_QUEUE,
            # A message that keeps crashing its consumer ends up dead instead of looping forever.
            "x-delivery-limit": 20,
        },
    )
    await queue.bind(exchange, routing_key="prediction.#")
    for delay in sorted(set(delays)):
        await channel.declare_queue(
            delay_queue_name(delay),
            durable=True,
            arguments={
                **_QUORUM,
                "x-message-ttl": int(round(delay * 1000)),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": QUEUE,
            },
        )
    return exchange


def event_message(event: PredictionEvent, headers: Mapping[str, Any] | None = None) -> aio_pika.Message:
    return aio_pika.Message(
        event.to_json(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.event_id,
        headers=dict(headers or {}),
    )


class Broker:
    """A robust connection with one confirming channel and the declared topology."""

    def __init__(
        self, connection: AbstractRobustConnection, channel: AbstractChannel, exchange: AbstractExchange
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.exchange = exchange

    @classmethod
    async def connect(cls, url: str, delays: Sequence[float] = ()) -> Broker:
        """Connect once (raising when RabbitMQ does not answer); afterwards the connection reconnects itself."""
        connection = await aio_pika.connect_robust(
            url,
            client_properties={"connection_name": "studio"},
            reconnect_interval=RECONNECT_INTERVAL_S,
            timeout=CONNECT_TIMEOUT_S,
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await declare_topology(channel, delays)
        except BaseException:
            await connection.close()
            raise
        return cls(connection, channel, exchange)

    @property
    def ready(self) -> bool:
        # `is_closed` of a robust connection only turns true on an explicit close; while it is reconnecting
        # only `connected` tells, and the channel is closed until it has been restored.
        return self.connection.connected.is_set() and not self.channel.is_closed

    async def check_unblocked(self) -> None:
        """Raise BrokerUnavailable while RabbitMQ blocks this connection (a memory or disk alarm): every publish
        would then wait, unconfirmed, until the alarm clears."""
        transport = self.connection.transport  # aio-pika's `UnderlayConnection`, declared on its abstract class
        if transport is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        try:
            # `ready()` returns at once unless the connection is down or blocked (Connection.Blocked).
            async with asyncio.timeout(BLOCKED_PROBE_S):
                await transport.ready()
        except TimeoutError:
            raise BrokerUnavailable("RabbitMQ blocked the connection (memory or disk alarm)") from None

    async def close(self) -> None:
        await self.connection.close()

    async def publish_event(self, event: PredictionEvent, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        """Return only once RabbitMQ has confirmed the event; else raise BrokerUnavailable."""
        if self.channel.is_closed:  # reconnecting: fail now rather than wait for the timeout
            raise BrokerUnavailable("RabbitMQ channel closed (reconnecting)")
        await publish_confirmed(self.exchange, event_message(event), event.routing_key, timeout)

    async def publish_to_queue(self, queue: str, message: aio_pika.Message, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        await publish_confirmed(self.channel.default_exchange, message, queue, timeout)


async def publish_confirmed(
    exchange: AbstractExchange, message: aio_pika.Message, routing_key: str, timeout: float = PUBLISH_TIMEOUT_S
) -> None:
    """Publish `mandatory` on a confirming, return-raising channel and return once RabbitMQ acked it; anything
    else (no confirm within `timeout`, a nack, the message returned as unroutable, a lost channel) raises
    BrokerUnavailable."""
    await _confirmed(exchange.publish(message, routing_key, mandatory=True), timeout)


async def _confirmed(publish: Awaitable[object], timeout: float) -> None:
    """Await a publish until RabbitMQ acks it; anything else (timeout, nack, return, lost channel) raises."""
    try:
        # The outer timeout matters: on a robust connection that is reconnecting, publish waits forever.
        async with asyncio.timeout(timeout):
            confirmation = await publish
    except TimeoutError:
        raise BrokerUnavailable(f"RabbitMQ did not confirm within {timeout:g}s") from None
    except Exception as exc:  # DeliveryError (returned/nacked), channel or connection errors
        raise BrokerUnavailable(f"RabbitMQ did not take the message: {exc!r}") from exc
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise BrokerUnavailable(f"RabbitMQ did not acknowledge the message: {confirmation!r}")
