"""The API replica's end of `studio.updates`: its own queue, consumed into the hub. (The changes the API itself
makes, create and cancel, are published by `common.resources.update_publisher`.)

The queue is exclusive and auto-delete, named after this process: RabbitMQ deletes it when the replica's
connection goes, so a replica that dies leaves nothing behind. Messages expire after a few seconds and the queue
keeps only the newest ones: an update nobody took in time is stale, and the hub's re-read covers it.
The API comes up without RabbitMQ (its requests do not need it) and attaches once the broker answers.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import web

from common.broker import Broker
from common.keys import POOL
from common.resources import when_connected
from common.tasks import background
from common.updates import declare_exchange
from services.api.keys import HUB, LINKS
from services.api.live.hub import Hub

logger = logging.getLogger(__name__)

QUEUE_PREFIX = "studio.updates."
MESSAGE_TTL_MS = 10_000
QUEUE_LIMIT = 10_000


def queue_name() -> str:
    return f"{QUEUE_PREFIX}{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


async def subscribe(connection: AbstractRobustConnection, hub: Hub) -> str:
    """Declare this replica's queue, bound to every update, and feed it to `hub`; returns the queue's name."""
    channel = await connection.channel(publisher_confirms=False)
    exchange = await declare_exchange(channel)
    queue = await channel.declare_queue(
        queue_name(),
        exclusive=True,
        auto_delete=True,
        arguments={"x-message-ttl": MESSAGE_TTL_MS, "x-max-length": QUEUE_LIMIT, "x-overflow": "drop-head"},
    )
    await queue.bind(exchange, routing_key="#")

    async def on_message(message: AbstractIncomingMessage) -> None:
        hub.receive(message.body)

    # No acknowledgements: a notification lost with a dying connection is made up for by the re-read.
    await queue.consume(on_message, no_ack=True)
    # Whatever changed while the connection was down was not delivered: re-read at once.
    connection.reconnect_callbacks.add(lambda *_: hub.resync_soon())
    return queue.name


async def live_updates(app: web.Application) -> AsyncIterator[None]:
    """Clean-up context: the hub and its task, and this replica's subscription once RabbitMQ answers (the
    publisher of the API's own changes is `resources.update_publisher`)."""
    hub = app[HUB] = Hub(app[POOL], app[LINKS])

    async def attach(broker: Broker) -> None:
        name = await subscribe(broker.connection, hub)
        hub.resync_soon()  # changes made before the queue existed
        logger.info("receiving live updates", extra={"queue": name})

    async with background(hub.run(), "live-hub"), background(when_connected(app, attach), "live-attach"):
        yield
