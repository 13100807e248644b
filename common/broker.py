"""RabbitMQ topology and the confirming publisher (docs/architecture.md has the whole event flow).

    studio.predictions (topic) --prediction.#--> studio.persister (quorum)
                                                    | rejected / over delivery limit
                                                    v
    studio.persister.delay.<ms> (quorum, TTL) --> studio.persister.dead (quorum)
        ^ persister republishes a failed event      (`redrive` moves it back)
        | with x-attempt + 1; on expiry the delay queue dead-letters it back to studio.persister

Every queue is quorum with at-least-once dead-lettering and `reject-publish` overflow, so neither a full
queue nor a dead-letter hop ever drops a message silently; each is replicated on `AMQP_QUORUM_SIZE` nodes of a
cluster (`x-quorum-initial-group-size`), so losing one node of three loses no message and stops no queue.
`AMQP_URL` may list the cluster's nodes: a process connects to one that answers and, whenever it loses it, its
robust connection is pointed at the next (`NodeWalk`). Publishing uses publisher confirms with
`mandatory=True` and `on_return_raises=True`: a message nobody routes is an error, not a silent drop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.connection import make_url

from common.errors import BrokerUnavailable
from common.events import PredictionEvent
from common.settings import Settings
from common.tasks import stop

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
PUBLISH_TIMEOUT_S = 5.0
# How often a robust connection retries after losing RabbitMQ (aio-pika's default, 5 s, keeps callbacks
# answered 503 for seconds after the broker is back), and how long one connection attempt may take.
RECONNECT_INTERVAL_S = 1.0
CONNECT_TIMEOUT_S = 10.0
BLOCKED_PROBE_S = 0.2
DEFAULT_QUORUM_SIZE = 3
CHANNEL_RENEWAL_PAUSE_S = 1.0
NACKS_BEFORE_RENEWAL = 3

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


def node_urls(amqp_url: str) -> list[str]:
    """The nodes `AMQP_URL` lists (one, or a cluster's, comma-separated)."""
    return [node.strip() for node in amqp_url.split(",") if node.strip()]


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


class NodeWalk:
    """Keeps a robust connection on a node of the cluster that answers.

    aio-pika's robust connection reconnects to the one URL it was given, so alone it would wait for a dead node
    to come back. Whenever the connection is lost, and then every reconnect interval while it stays down, this
    points it (its public `url`) at the next node, so each attempt tries another one. Its channels, queues and
    consumers are restored on whichever node answers, as after any reconnect; publishes waiting for confirms on
    the lost node fail (aiormq rejects them when the channel closes), so their callers retry.
    """

    def __init__(self, connection: aio_pika.RobustConnection, nodes: Sequence[str], current: int) -> None:
        self.connection = connection
        self.nodes = list(nodes)
        self.current = current
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if len(self.nodes) < 2:
            return
        self.connection.close_callbacks.add(self._lost)
        self._task = asyncio.get_running_loop().create_task(self._walk(), name="amqp-node-walk")

    def _lost(self, _sender: object, exc: BaseException | None) -> None:
        if not self.connection.close_called:  # a loss, not our own close
            self._next()
            logger.warning("RabbitMQ node lost (%r); reconnecting to %s", exc, self.connection)

    def _next(self) -> None:
        self.current = (self.current + 1) % len(self.nodes)
        self.connection.url = make_url(self.nodes[self.current])

    async def _walk(self) -> None:
        while True:
            await asyncio.sleep(RECONNECT_INTERVAL_S)  # the robust connection's pace: one node per attempt
            if not self.connection.connected.is_set() and not self.connection.close_called:
                self._next()
                logger.info("RabbitMQ still not reached; trying %s", self.connection)

    async def close(self) -> None:
        await stop(self._task)


class Broker:
    """A robust connection with one confirming channel and the declared topology."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        exchange: AbstractExchange,
        walk: NodeWalk | None = None,
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.exchange = exchange
        self._walk = walk
        self._renewal: asyncio.Task[None] | None = None
        self._nacks_in_row = 0

    @classmethod
    async def connect(cls, url: str, delays: Sequence[float] = (), quorum_size: int = DEFAULT_QUORUM_SIZE) -> Broker:
        """Connect once to a node of `url` that answers (raising when none does); afterwards the connection
        reconnects by itself, to another node when its own has gone."""
        nodes = node_urls(url)
        # Processes start on different nodes, so a cluster's connections spread over it.
        first = random.randrange(len(nodes))
        failures: list[BaseException] = []
        for current in ((first + n) % len(nodes) for n in range(len(nodes))):
            try:
                return await cls._connect_node(nodes, current, delays, quorum_size)
            except Exception as exc:  # refused, timed out, handshake or declaration failed: try the next node
                failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        raise ConnectionError(f"no RabbitMQ node answered: {failures!r}")

    @classmethod
    async def _connect_node(
        cls, nodes: Sequence[str], current: int, delays: Sequence[float], quorum_size: int
    ) -> Broker:
        connection = await aio_pika.connect_robust(
            nodes[current],
            client_properties={"connection_name": "studio"},
            reconnect_interval=RECONNECT_INTERVAL_S,
            timeout=CONNECT_TIMEOUT_S,
            connection_class=aio_pika.RobustConnection,
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await declare_topology(connection, channel, delays, quorum_size)
        except BaseException:
            await connection.close()
            raise
        walk = NodeWalk(connection, nodes, current)
        walk.start()
        return cls(connection, channel, exchange, walk)

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
        await stop(self._renewal)
        if self._walk is not None:
            await self._walk.close()
        await self.connection.close()

    async def publish_event(self, event: PredictionEvent, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        """Return only once RabbitMQ has confirmed the event; else raise BrokerUnavailable."""
        if self.channel.is_closed:  # reconnecting: fail now rather than wait for the timeout
            raise BrokerUnavailable("RabbitMQ channel closed (reconnecting)")
        await self._settled(self.exchange.publish(event_message(event), event.routing_key, mandatory=True), timeout)

    async def publish_to_queue(self, queue: str, message: aio_pika.Message, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        await self._settled(self.channel.default_exchange.publish(message, queue, mandatory=True), timeout)

    async def _settled(self, publish: Awaitable[object], timeout: float) -> None:
        try:
            await _confirmed(publish, timeout)
        except _Nacked:
            self._nacks_in_row += 1
            if self._nacks_in_row >= NACKS_BEFORE_RENEWAL:
                self._renew_channel()
            raise
        self._nacks_in_row = 0

    def _renew_channel(self) -> None:
        """Open the confirming channel afresh after nacks in a row, one renewal at a time, at most one a second.

        RabbitMQ (3.10) nacks every later publish of a channel whose first publish to a quorum queue met the
        queue without a leader (its node had just died, the election was under way), even once a leader is
        elected; a fresh channel publishes normally. A process that reconnects after losing its node publishes
        at once, so it meets exactly that. Publishes meanwhile fail as on a lost channel (503, or a retry). A
        lone nack (a queue at its limit) is no reason to: the next publish may well be taken.
        """
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.get_running_loop().create_task(self._reopen(), name="amqp-channel-renewal")

    async def _reopen(self) -> None:
        try:
            await self.channel.close()
            await self.channel.reopen()
            logger.warning("publishes nacked: the confirming channel was opened afresh")
        except Exception as exc:  # the connection is going too: its own reconnect restores the channel
            logger.warning("could not renew the confirming channel: %r", exc)
        await asyncio.sleep(CHANNEL_RENEWAL_PAUSE_S)


async def publish_confirmed(
    exchange: AbstractExchange, message: aio_pika.Message, routing_key: str, timeout: float = PUBLISH_TIMEOUT_S
) -> None:
    """Publish `mandatory` on a confirming, return-raising channel and return once RabbitMQ acked it; anything
    else (no confirm within `timeout`, a nack, the message returned as unroutable, a lost channel) raises
    BrokerUnavailable."""
    await _confirmed(exchange.publish(message, routing_key, mandatory=True), timeout)


class _Nacked(BrokerUnavailable):
    """RabbitMQ refused the message (Basic.Nack)."""


async def _confirmed(publish: Awaitable[object], timeout: float) -> None:
    """Await a publish until RabbitMQ acks it; anything else (timeout, nack, return, lost channel) raises."""
    try:
        # The outer timeout matters: on a robust connection that is reconnecting, publish waits forever.
        async with asyncio.timeout(timeout):
            confirmation = await publish
    except TimeoutError:
        raise BrokerUnavailable(f"RabbitMQ did not confirm within {timeout:g}s") from None
    except aiormq.exceptions.DeliveryError as exc:  # returned or nacked
        kind = _Nacked if isinstance(exc.frame, aiormq.spec.Basic.Nack) else BrokerUnavailable
        raise kind(f"RabbitMQ did not take the message: {exc!r}") from exc
    except Exception as exc:  # channel or connection errors
        raise BrokerUnavailable(f"RabbitMQ did not take the message: {exc!r}") from exc
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise _Nacked(f"RabbitMQ did not acknowledge the message: {confirmation!r}")
