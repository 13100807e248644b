"""The gateway's publish path: hand-packed AMQP frames are byte for byte what pamqp (aiormq's encoder) writes, and
batched publishes each get their own confirm, on a real RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import aiormq
import pamqp.frame
import pytest
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from common.frames import Publisher, publish_frames


def _pamqp(channel: int, exchange: str, routing_key: str, message_id: str, body: bytes, max_body: int) -> bytes:
    properties = commands.Basic.Properties(content_type="application/json", delivery_mode=2, message_id=message_id)
    frames = [
        commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True),
        ContentHeader(body_size=len(body), properties=properties),
        *(ContentBody(body[at : at + max_body]) for at in range(0, len(body), max_body)),
    ]
    return b"".join(pamqp.frame.marshal(frame, channel) for frame in frames)


@pytest.mark.parametrize(
    ("body", "max_body"),
    [
        (b'{"eventId":"e"}', 131064),
        (b"", 131064),  # no body frame at all, as pamqp and aiormq send it
        (bytes(range(256)) * 40, 1000),  # split over eleven body frames, the last one short
        (b"x" * 2000, 1000),  # split exactly
    ],
)
def test_publish_frames_match_pamqp(body, max_body):
    args = (7, "studio.predictions", "prediction.succeeded", "0b6f3a52-5d1e-5f0e-9b8a-4c2d1e0f9a77", body, max_body)
    assert publish_frames(*args) == _pamqp(*args)


def test_a_short_string_over_255_bytes_is_refused_not_truncated():
    with pytest.raises(ValueError, match="255"):
        publish_frames(1, "x", "k" * 256, "id", b"{}", 131064)


async def test_a_burst_mixed_with_aiormqs_own_publishes_is_confirmed_one_by_one(services):
    """Hundreds of publishes in one turn of the loop, batched, interleaved with aiormq's own on the same channel,
    some unroutable: each hears its own answer, the queue holds exactly the routed ones, no tag is left over."""
    name = f"test.frames.{uuid.uuid4().hex}"
    connection = await aio_pika.connect(services.settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, auto_delete=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "kept")
        raw = await channel.get_underlay_channel()
        assert isinstance(raw, aiormq.Channel)
        publisher = Publisher(timeout_s=10)

        async def ours(n: int) -> object:
            key = "nobody" if n % 7 == 0 else "kept"
            return await publisher.publish(raw, name, key, f"ours-{n}", b'{"n": %d}' % n)

        async def theirs(n: int) -> object:
            properties = aiormq.spec.Basic.Properties(message_id=f"theirs-{n}")
            return await raw.basic_publish(
                b"{}", exchange=name, routing_key="kept", properties=properties, mandatory=True
            )

        async with asyncio.timeout(30):
            answers = await asyncio.gather(
                *(ours(n) for n in range(300)), *(theirs(n) for n in range(60)), return_exceptions=True
            )
            ours_answers, theirs_answers = answers[:300], answers[300:]
            for n, answer in enumerate(ours_answers):
                if n % 7 == 0:
                    assert isinstance(answer, aiormq.exceptions.PublishError), (n, answer)
                else:
                    assert isinstance(answer, aiormq.spec.Basic.Ack), (n, answer)
            assert all(isinstance(answer, aiormq.spec.Basic.Ack) for answer in theirs_answers), theirs_answers

            kept = set()
            while len(kept) < 300 - 43 + 60:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                kept.add(message.message_id)
        expected = {f"ours-{n}" for n in range(300) if n % 7} | {f"theirs-{n}" for n in range(60)}
        assert kept == expected
        assert await queue.get(no_ack=True, fail=False) is None
        assert not raw.confirmations and not raw.message_id_delivery_tag
        assert raw.delivery_tag == 360
