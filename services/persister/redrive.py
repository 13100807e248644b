"""`python -m services.persister redrive`: move every message of `studio.persister.dead` back to
`studio.persister`, its attempt count reset, each one acknowledged on the dead queue only once RabbitMQ has
confirmed its copy (a crash in between duplicates a message, which the persister absorbs; it never loses one).
"""

from __future__ import annotations

import logging

import aio_pika

from common.broker import ATTEMPT_HEADER, DEAD_QUEUE, QUEUE, Broker, RetrySchedule
from common.settings import Settings

logger = logging.getLogger(__name__)

# Headers of a previous life the fresh attempts should not inherit.
_DROPPED_HEADERS = {"x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason"}


async def redrive(settings: Settings) -> int:
    """Returns how many messages were moved. Messages dead-lettered meanwhile wait for the next run."""
    broker = await Broker.connect(settings.amqp_url, RetrySchedule.from_settings(settings).all)
    moved = 0
    try:
        channel = await broker.connection.channel()
        queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
        waiting = queue.declaration_result.message_count or 0
        while moved < waiting:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            headers = {k: v for k, v in (message.headers or {}).items() if k not in _DROPPED_HEADERS}
            headers[ATTEMPT_HEADER] = 1
            headers["x-redriven"] = int(str(headers.get("x-redriven", 0) or 0)) + 1
            copy = aio_pika.Message(
                message.body,
                headers=headers,
                content_type=message.content_type or "application/json",
                message_id=message.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            try:
                await broker.publish_to_queue(QUEUE, copy)
            except BaseException:
                await message.nack(requeue=True)
                raise
            await message.ack()
            moved += 1
        await channel.close()
    finally:
        await broker.close()
    logger.info("redrove %d dead messages to %s", moved, QUEUE)
    return moved
