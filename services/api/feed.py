"""The API replica's end of `studio.updates`: its own queue, consumed into the hub, and the publisher of the
changes the API itself makes (create, cancel).

The queue is exclusive and auto-delete, named after this process: RabbitMQ deletes it when the replica's
connection goes, so a replica that dies leaves nothing behind. Messages expire after a few seconds and the queue
keeps only the newest ones: an update nobody took in time is stale, and the hub's re-read covers it.
The API comes up without RabbitMQ (its requests do not need it) and attaches once the broker answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import web

from common.updates import UpdatePublisher, declare_exchange
from services.api.hub import Hub
from services.api.keys import BROKER, HUB, LINKS, POOL, UPDATES

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
    """Clean-up context: the hub and its task, the publisher, and the subscription once RabbitMQ answers."""
    hub = app[HUB] = Hub(app[POOL], app[LINKS])
    publisher = app[UPDATES] = UpdatePublisher()
    publisher.start()
    hub_task = asyncio.get_running_loop().create_task(hub.run(), name="live-hub")

    async def attach() -> None:
        broker = await app[BROKER].wait_connected()
        name = await subscribe(broker.connection, hub)
        await publisher.attach(broker.connection)
        hub.resync_soon()  # changes made before the queue existed
        logger.info("receiving live updates", extra={"queue": name})

    attaching = asyncio.get_running_loop().create_task(attach(), name="live-attach")
    yield
    for task in (attaching, hub_task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await publisher.close()
