"""The live-update publisher against a RabbitMQ of its own: fire and forget, even when no API replica listens (the
session's broker has the session's API replicas bound, so an unroutable update could not happen there)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import aio_pika
import pytest

from common.db.generations import Generation
from common.predictions import Status
from common.presign import OutputLinks
from common.representation import generation_json
from common.settings import Settings
from common.updates import Update, UpdatePublisher


def _generation() -> Generation:
    now = datetime.now(UTC)
    return Generation(
        id=uuid.uuid4(),
        user_id=f"user-{uuid.uuid4()}",
        prediction_id=f"pred_{uuid.uuid4().hex}",
        model="truefusion-pro",
        prompt="a lighthouse",
        status=Status.SUCCEEDED,
        output_key=None,
        output_keys=(),
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


def test_an_update_carries_keys_and_gets_fresh_urls_where_it_is_sent():
    generation = replace(_generation(), output_key="generations/a.png", output_keys=("generations/a.png",))
    travelled = Update.from_json(Update.of(generation).to_json())
    links = OutputLinks.from_settings(Settings.from_env({}))

    assert b"X-Amz" not in Update.of(generation).to_json()  # no URL goes through RabbitMQ
    with pytest.raises(RuntimeError):
        travelled.data  # noqa: B018 (an update is never sent without its URLs)
    sent = json.loads(travelled.linked(links).data)
    assert sent["outputUrls"] == [sent["outputUrl"]] and "X-Amz-Signature=" in sent["outputUrl"]
    assert sent == generation_json(generation, links)
