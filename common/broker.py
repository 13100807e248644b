"""The connection to RabbitMQ and the confirming publisher (the queues it declares are in `common/topology.py`).

`AMQP_URL` may list the cluster's nodes: a process connects to one that answers and, whenever it loses it, its
robust connection is pointed at the next (`NodeWalk`). Publishing uses publisher confirms with
`mandatory=True` and `on_return_raises=True`: a message nobody routes is an error, not a silent drop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Sequence

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.connection import make_url

from common.errors import BrokerUnavailable
from common.events import PredictionEvent
from common.tasks import stop
from common.topology import DEFAULT_QUORUM_SIZE, declare_topology, event_message

logger = logging.getLogger(__name__)
PUBLISH_TIMEOUT_S = 5.0
# How often a robust connection retries after losing RabbitMQ (aio-pika's default, 5 s, keeps callbacks
# answered 503 for seconds after the broker is back), and how long one connection attempt may take.
RECONNECT_INTERVAL_S = 1.0
CONNECT_TIMEOUT_S = 10.0
BLOCKED_PROBE_S = 0.2
CHANNEL_RENEWAL_PAUSE_S = 1.0
NACKS_BEFORE_RENEWAL = 3


def node_urls(amqp_url: str) -> list[str]:
    """The nodes `AMQP_URL` lists (one, or a cluster's, comma-separated)."""
    return [node.strip() for node in amqp_url.split(",") if node.strip()]


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
