"""RabbitMQ topology: the exchange, the queues and their arguments, the retry schedule's delay queues, the
headers a message carries on its way to the dead-letter queue (docs/architecture.md has the whole event flow).

    studio.predictions (topic) --prediction.#--> studio.persister (quorum)
                                                    | rejected / over delivery limit
                                                    v
    studio.persister.delay.<ms> (quorum, TTL) --> studio.persister.dead (quorum)
        ^ persister republishes a failed event      (`redrive` moves it back)
        | with x-attempt + 1; on expiry the delay queue dead-letters it back to studio.persister

Every queue is quorum with at-least-once dead-lettering and `reject-publish` overflow, so neither a full
queue nor a dead-letter hop ever drops a message silently; each is replicated on `AMQP_QUORUM_SIZE` nodes of a
cluster (`x-quorum-initial-group-size`), so losing one node of three loses no message and stops no queue.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, AbstractRobustConnection

from common.events import PredictionEvent
from common.settings import Settings

logger = logging.getLogger(__name__)
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
DEFAULT_QUORUM_SIZE = 3

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


GROUP_SIZE_ARG = "x-quorum-initial-group-size"


class _QueueDeclarer:
    """Declares Studio's quorum queues with `x-quorum-initial-group-size`. RabbitMQ refuses to redeclare a queue
    with an argument it was not declared with, and queues declared before the argument existed (an upgraded
    deployment) lack it: each is first declared on a scratch channel, and one that refuses the group size is
    declared as it stands (its members can be grown with `rabbitmq-queues grow`). The confirming channel then
    declares what held, so its robust restore after a reconnect declares the same."""

    def __init__(self, connection: AbstractRobustConnection, channel: AbstractChannel, quorum_size: int) -> None:
        self.connection = connection
        self.channel = channel
        self.group = {GROUP_SIZE_ARG: quorum_size}
        self._scratch: AbstractChannel | None = None

    async def declare(self, name: str, arguments: dict[str, Any]) -> AbstractQueue:
        wanted = {**arguments, **self.group}
        if self._scratch is None or self._scratch.is_closed:
            self._scratch = await self.connection.channel(publisher_confirms=False)
        try:
            await self._scratch.declare_queue(name, durable=True, arguments=wanted)
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            if GROUP_SIZE_ARG not in str(exc):
                raise
            logger.warning("queue %s was declared without %s: it keeps its members", name, GROUP_SIZE_ARG)
            wanted = arguments
        return await self.channel.declare_queue(name, durable=True, arguments=wanted)

    async def close(self) -> None:
        if self._scratch is not None and not self._scratch.is_closed:
            await self._scratch.close()


async def declare_topology(
    connection: AbstractRobustConnection,
    channel: AbstractChannel,
    delays: Sequence[float],
    quorum_size: int = DEFAULT_QUORUM_SIZE,
) -> AbstractExchange:
    """Declare exchange and queues on `channel`; idempotent, so every process may do it at start."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queues = _QueueDeclarer(connection, channel, quorum_size)
    try:
        await queues.declare(DEAD_QUEUE, {"x-queue-type": "quorum"})
        queue = await queues.declare(
            QUEUE,
            {
                **_QUORUM,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": DEAD_QUEUE,
                # A message that keeps crashing its consumer ends up dead instead of looping forever.
                "x-delivery-limit": 20,
            },
        )
        await queue.bind(exchange, routing_key="prediction.#")
        for delay in sorted(set(delays)):
            await queues.declare(
                delay_queue_name(delay),
                {
                    **_QUORUM,
                    "x-message-ttl": int(round(delay * 1000)),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": QUEUE,
                },
            )
    finally:
        await queues.close()
    return exchange


def event_message(event: PredictionEvent, headers: Mapping[str, Any] | None = None) -> aio_pika.Message:
    return aio_pika.Message(
        event.to_json(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.event_id,
        headers=dict(headers or {}),
    )
