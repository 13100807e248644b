"""The confirmed publish of events (the gateway's and the reconciler's path), through aio-pika's public
`Exchange.publish` on a real RabbitMQ: a message nobody routes is a failure, never a silent drop, and a burst of
concurrent publishes each hears its own confirm."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest

from common.broker import Broker, publish_confirmed
from common.errors import BrokerUnavailable
from tests.helpers import eventually


def _message(n: int) -> aio_pika.Message:
    return aio_pika.Message(b'{"n": %d}' % n, content_type="application/json", message_id=f"m-{n}")


async def test_an_unroutable_publish_is_a_failure(broker: Broker):
    name = f"test.publish.{uuid.uuid4().hex}"
    exchange = await broker.channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, auto_delete=True)
    try:
        with pytest.raises(BrokerUnavailable, match="did not take"):
            await publish_confirmed(exchange, _message(0), "nobody", timeout=5)
    finally:
        await exchange.delete()


async def test_a_burst_of_concurrent_publishes_each_hears_its_own_answer(broker: Broker):
    """Hundreds of publishes at once on one channel, some unroutable: each returned one fails, each routed one
    is confirmed, and the queue holds exactly those."""
    name = f"test.publish.{uuid.uuid4().hex}"
    channel = broker.channel
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, auto_delete=True)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, "kept")
    try:
        answers = await asyncio.gather(
            *(publish_confirmed(exchange, _message(n), "nobody" if n % 7 == 0 else "kept") for n in range(300)),
            return_exceptions=True,
        )
        for n, answer in enumerate(answers):
            if n % 7 == 0:
                assert isinstance(answer, BrokerUnavailable), (n, answer)
            else:
                assert answer is None, (n, answer)
        expected = {f"m-{n}" for n in range(300) if n % 7}
        kept: set[str | None] = set()

        async def all_kept() -> bool:
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                kept.add(message.message_id)
            return len(kept) >= len(expected)

        await eventually("every routed message queued", all_kept, timeout=10)
        assert kept == expected
    finally:
        await queue.delete()
        await exchange.delete()
