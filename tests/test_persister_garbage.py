"""What the session's persister does with input nobody should send: output URLs that cannot be parsed end the
generation `failed` at once, and broker messages that are no event go straight to the dead-letter queue without
holding a consumer slot."""

from __future__ import annotations

import json
import uuid

import aio_pika
import pytest

from common.broker import Broker
from common.events import PredictionEvent
from common.topology import DEAD_QUEUE, QUEUE
from tests.helpers import eventually, metric, metrics_of
from tests.persister_kit import dead_messages, event_of, insert_generation, publish, sim_prediction, wait_row


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://cdn.skytells.ai:abc/x.png", id="port-not-a-number"),
        pytest.param("https://cdn.skytells.ai:70000/x.png", id="port-out-of-range"),
        pytest.param("https://[cdn.skytells.ai/x.png", id="broken-ipv6-literal"),
        pytest.param(f"https://{'a' * 64}.skytells.ai/x.png", id="64-character-label"),
        pytest.param("https://xn--zz.skytells.ai/x.png", id="invalid-idna-label"),
        pytest.param("https://cdn..skytells.ai/x.png", id="empty-label"),
    ],
)
async def test_an_output_url_that_cannot_be_parsed_ends_the_generation_failed_at_once(
    http, db, broker, persister_port, url
):
    before = await metrics_of(http, persister_port)
    prediction_id = f"pred_garbled_{uuid.uuid4().hex}"
    gid = await insert_generation(db, prediction_id)
    await publish(broker, event_of({"id": prediction_id, "status": "succeeded", "output": [url]}))

    record = await wait_row(db, gid, timeout=20)

    assert record["status"] == "failed", dict(record)
    assert record["error"].startswith("Could not store the output: output URL")
    after = await metrics_of(http, persister_port)
    for name in ("studio_persister_retries_total", "studio_persister_dead_letters_total"):
        assert metric(after, name) == metric(before, name), name


def _deeply_nested() -> bytes:
    return b'{"eventId": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"


GARBAGE = {
    "not-json": b"\xff\xfe not json at all",
    "json-but-a-list": b'["eventId", "predictionId"]',
    "wrong-shape": json.dumps({"eventId": "e", "predictionId": {"nested": True}, "output": "x"}).encode(),
    "nested-too-deep": _deeply_nested(),
}


async def test_messages_that_are_no_event_are_dead_lettered_at_once_with_the_reason(
    http, sim, db, broker, settings, persister_port
):
    before = await metrics_of(http, persister_port)
    # More undecodable messages than the consumer has slots: were any of them left unacknowledged, the real
    # event published after them would never be delivered.
    ids = []
    for n in range(settings.persister_prefetch + 2):
        name = list(GARBAGE)[n % len(GARBAGE)]
        message_id = f"garbage-{name}-{uuid.uuid4().hex}"
        ids.append(message_id)
        body = aio_pika.Message(GARBAGE[name], message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await broker.publish_to_queue(QUEUE, body)
    prediction = await sim_prediction(http, sim, "after the garbage")
    gid = await insert_generation(db, prediction["id"])
    await publish(broker, event_of(prediction))

    assert (await wait_row(db, gid, timeout=30))["status"] == "succeeded"

    async def all_dead() -> list[aio_pika.abc.AbstractIncomingMessage] | None:
        dead = await _dead_with_headers(broker)
        mine = [m for m in dead if m.message_id in ids]
        return mine if len(mine) == len(ids) else None

    mine = await eventually("every undecodable message in the dead-letter queue", all_dead, timeout=20)
    for message in mine:
        headers = message.headers or {}
        assert str(headers["x-dead-reason"]).startswith("undecodable event"), headers
        assert headers["x-attempts"] == 1
    after = await metrics_of(http, persister_port)
    assert metric(after, "studio_persister_retries_total") == metric(before, "studio_persister_retries_total")
    assert metric(after, "studio_persister_events_total", outcome="unreadable") >= metric(
        before, "studio_persister_events_total", outcome="unreadable"
    ) + len(ids)
    # Nothing of ours is left in the dead-letter queue for the tests after this one.
    await _drop_dead(broker, set(ids))


@pytest.mark.parametrize("name", list(GARBAGE))
def test_the_decoder_refuses_each_kind_of_garbage_with_a_value_error(name):
    with pytest.raises(ValueError):
        PredictionEvent.from_json(GARBAGE[name])


async def _dead_with_headers(broker: Broker) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The messages of the dead-letter queue, each returned to it unacknowledged."""
    channel = await broker.connection.channel()
    try:
        queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
        held = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            held.append(message)
        for message in held:
            await message.nack(requeue=True)
        return held
    finally:
        await channel.close()


async def _drop_dead(broker: Broker, ids: set[str]) -> None:
    channel = await broker.connection.channel()
    try:
        queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
        held = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            held.append(message)
        for message in held:
            if message.message_id in ids:
                await message.ack()
            else:
                await message.nack(requeue=True)
    finally:
        await channel.close()
    assert not [b for b in await dead_messages(broker) if b in GARBAGE.values()]
