"""The live-update publisher against a RabbitMQ of its own: fire and forget, even when no API replica listens (the
session's broker has the session's API replicas bound, so an unroutable update could not happen there)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

import aio_pika

from common.db.generations import Generation
from common.predictions import Status
from common.updates import UpdatePublisher


def _generation() -> Generation:
    now = datetime.now(UTC)
    return Generation(
        id=uuid.uuid4(),
        user_id=f"user-{uuid.uuid4()}",
        prediction_id=f"pred_{uuid.uuid4().hex}",
        model="truefusion-pro",
        prompt="a lighthouse",
        status=Status.SUCCEEDED,
        output_url=None,
        output_urls=(),
        error=None,
        idempotency_key=None,
        request_hash=None,
        request_id=None,
        created_at=now,
        updated_at=now,
        completed_at=now,
        submit_timed_out_at=None,
        checked_at=None,
        webhook=None,
        webhook_events=(),
    )


async def test_an_update_is_never_returned_by_rabbitmq_nor_logged_as_an_error(rabbit, caplog):
    """No API replica binds a queue to `studio.updates` here: a mandatory publish would come back, and
    aiormq would log every returned update as an error with its body."""
    connection = await aio_pika.connect_robust(rabbit.url)
    publisher = UpdatePublisher()
    publisher.start()
    try:
        await publisher.attach(connection)
        assert publisher._channel is not None
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                publisher.notify(_generation())
            async with asyncio.timeout(10):
                await publisher._queue.join()  # handed to RabbitMQ
                # A return would follow the publish: a round trip on the same channel lets it land first.
                await publisher._channel.set_qos(prefetch_count=1)
    finally:
        await publisher.close()
        await connection.close()

    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
