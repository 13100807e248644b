"""The gateway's promise: a 200 means the event is durably in RabbitMQ; anything else is a 503 Skytells retries.

These tests stop, kill, slow down and reconfigure a broker, so they run against a RabbitMQ of their own (and
gateways pointed at it); the session's broker, which the other tests use, is never disturbed. Where a broker
must be slow rather than down, a small TCP proxy between gateway and broker holds back what RabbitMQ sends
(its confirms) while letting the gateway's publishes through.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import httpx
import pytest

from common.topology import DEAD_QUEUE, EXCHANGE, QUEUE
from tests.gateway_kit import (
    NEW_KEY,
    OLD_KEY,
    Gateway,
    PausableProxy,
    Tally,
    amqp_channel,
    answers,
    new_id,
    post,
    queued_prediction_ids,
    ready_gateway,
    refuses_connections,
    start_gateway,
)
from tests.helpers import eventually

logger = logging.getLogger(__name__)


# --- fixtures (helpers in gateway_kit.py) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def gateway(stack, rabbit) -> AsyncIterator[Gateway]:
    async with ready_gateway(stack, rabbit.url) as gw:
        yield gw


@pytest.fixture(scope="module")
async def proxy(rabbit) -> AsyncIterator[PausableProxy]:
    p = await PausableProxy(rabbit.port).start()
    try:
        yield p
    finally:
        p.resume()
        await p.stop()


@pytest.fixture(scope="module")
async def proxied_gateway(stack, proxy) -> AsyncIterator[Gateway]:
    async with ready_gateway(stack, proxy.url) as gw:
        yield gw


# --- topology ---------------------------------------------------------------------------------------------------

MAIN_QUEUE_ARGUMENTS = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
    "x-dead-letter-exchange": "",
    "x-dead-letter-routing-key": DEAD_QUEUE,
    "x-delivery-limit": 20,
    "x-quorum-initial-group-size": 3,  # AMQP_QUORUM_SIZE's default: replicated on three nodes of a cluster
}


async def test_gateway_declares_the_exchange_and_a_quorum_queue_that_loses_nothing(gateway, rabbit):
    async with amqp_channel(rabbit.url) as channel:
        # Redeclaring with the exact same properties succeeds only if that is what the gateway declared.
        await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True, passive=False)
        await channel.declare_queue(QUEUE, durable=True, arguments=MAIN_QUEUE_ARGUMENTS)

    for different in (
        {"x-overflow": "drop-head"},
        {"x-dead-letter-strategy": "at-most-once"},
        {"x-queue-type": "classic"},
        {"x-quorum-initial-group-size": 5},
    ):
        async with amqp_channel(rabbit.url) as channel:
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
                await channel.declare_queue(QUEUE, durable=True, arguments={**MAIN_QUEUE_ARGUMENTS, **different})
    async with amqp_channel(rabbit.url) as channel:
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)


# --- signature key rotation -------------------------------------------------------------------------------------


async def test_callbacks_signed_with_any_configured_key_are_accepted(gateway, rabbit, http):
    old, new, other = new_id(), new_id(), new_id()

    assert (await post(http, gateway.url, old, key=OLD_KEY)).status_code == 200
    assert (await post(http, gateway.url, new, key=NEW_KEY)).status_code == 200
    assert (await post(http, gateway.url, other, key="retired-key")).status_code == 401

    queued = await queued_prediction_ids(rabbit.url)
    assert old in queued and new in queued and other not in queued


# --- the broker refuses ---------------------------------------------------------------------------------------


async def test_a_message_nobody_routes_is_a_503_not_a_silent_drop(gateway, rabbit, http):
    async with amqp_channel(rabbit.url) as channel:
        queue = await channel.declare_queue(QUEUE, passive=True)
        await queue.unbind(EXCHANGE, "prediction.#")
        try:
            response = await post(http, gateway.url, new_id())
        finally:
            await queue.bind(EXCHANGE, "prediction.#")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json() == {"error": "Event broker unavailable, retry later"}
    assert (await post(http, gateway.url, new_id())).status_code == 200  # the channel survived the return


async def test_a_message_the_broker_nacks_is_a_503(gateway, rabbit, http):
    full = f"test.full.{uuid.uuid4().hex[:8]}"
    async with amqp_channel(rabbit.url) as channel:
        # A (classic) reject-publish queue already at its limit makes RabbitMQ nack whatever is routed to it.
        queue = await channel.declare_queue(
            full, auto_delete=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        )
        await channel.default_exchange.publish(aio_pika.Message(b"filler"), routing_key=full)
        await queue.bind(EXCHANGE, "prediction.#")
        try:
            response = await post(http, gateway.url, new_id())
        finally:
            await queue.delete(if_unused=False, if_empty=False)

    assert response.status_code == 503
    assert (await post(http, gateway.url, new_id())).status_code == 200


async def test_a_broker_that_does_not_confirm_within_5s_gets_a_503(proxied_gateway, proxy, http):
    assert (await post(http, proxied_gateway.url, new_id())).status_code == 200

    proxy.pause()
    try:
        response = await post(http, proxied_gateway.url, new_id())
    finally:
        proxy.resume()

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert (await post(http, proxied_gateway.url, new_id())).status_code == 200


# --- shutdown ---------------------------------------------------------------------------------------------------


async def test_sigterm_stops_accepting_and_answers_in_flight_callbacks_only_after_their_confirm(
    stack, proxy, rabbit, http
):
    gw = start_gateway(stack, proxy.url)
    try:
        await eventually("the gateway to be ready", lambda: answers(gw.url, "/readyz", 200))
        ids = [new_id() for _ in range(10)]

        proxy.pause()  # publishes reach RabbitMQ, their confirms wait in the proxy
        in_flight = [asyncio.create_task(post(http, gw.url, pid)) for pid in ids]

        async def all_waiting_for_confirms() -> bool:
            text = (await http.get(f"{gw.url}/metrics")).text
            return "studio_webhook_publishes_in_flight 10.0" in text

        await eventually("10 publishes in flight", all_waiting_for_confirms)
        gw.process.signal(signal.SIGTERM)
        await eventually("the gateway to stop accepting", lambda: refuses_connections(gw.url))
        assert not any(task.done() for task in in_flight)  # no answer without a confirm

        proxy.resume()
        responses = await asyncio.gather(*in_flight)
        code = await asyncio.to_thread(gw.process.popen.wait, 30)
    finally:
        proxy.resume()
        gw.process.stop()

    assert [r.status_code for r in responses] == [200] * 10
    assert code == 0
    queued = await queued_prediction_ids(rabbit.url)
    assert set(ids) <= set(queued)


# --- outages ----------------------------------------------------------------------------------------------------


async def test_gateway_starts_without_broker_says_so_and_connects_when_it_appears(stack, rabbit, gateway, http):
    await asyncio.to_thread(rabbit.halt)
    late = start_gateway(stack, rabbit.url)
    try:
        await eventually("/healthz without a broker", lambda: answers(late.url, "/healthz", 200))
        ready = await http.get(f"{late.url}/readyz")
        refused = await post(http, late.url, new_id())

        await asyncio.to_thread(rabbit.resume)
        await eventually("/readyz once the broker is up", lambda: answers(late.url, "/readyz", 200))
        accepted = await post(http, late.url, new_id())
    finally:
        late.process.stop()

    assert ready.status_code == 503 and ready.json()["failing"].keys() == {"broker"}
    assert refused.status_code == 503
    assert accepted.status_code == 200
    # The long-running gateway lived through the same restart and reconnected without being restarted.
    await eventually("the old gateway to reconnect", lambda: answers(gateway.url, "/readyz", 200))
    assert (await post(http, gateway.url, new_id())).status_code == 200


async def test_promise_every_200_is_in_the_queue_across_a_broker_crash(gateway, rabbit):
    """Stream signed callbacks; kill RabbitMQ (SIGKILL) mid-stream and start it again; count what was kept."""
    await eventually("the gateway to be ready", lambda: answers(gateway.url, "/readyz", 200))
    await queued_prediction_ids(rabbit.url)  # start from an empty queue
    tally = Tally("pred_promise_")
    stop = asyncio.Event()

    async def at_least(get, n: int) -> bool:
        return len(get()) >= n

    async with httpx.AsyncClient(timeout=30) as client:
        senders = [asyncio.create_task(tally.send(client, gateway.url, stop, 0.1)) for _ in range(8)]
        try:
            await eventually("100 accepted", lambda: at_least(lambda: tally.accepted, 100))
            assert rabbit.process is not None
            await asyncio.to_thread(rabbit.process.kill)  # a crash, not a clean shutdown
            await asyncio.to_thread(rabbit.halt)
            await eventually("/readyz to report the outage", lambda: answers(gateway.url, "/readyz", 503))
            refused_before = len(tally.refused)
            await eventually("50 refused", lambda: at_least(lambda: tally.refused, refused_before + 50))
            await asyncio.to_thread(rabbit.resume)
            accepted_before = len(tally.accepted)
            await eventually("100 more accepted", lambda: at_least(lambda: tally.accepted, accepted_before + 100), 60)
        finally:
            stop.set()
            await asyncio.gather(*senders)

    queued = await queued_prediction_ids(rabbit.url)
    logger.warning(
        "promise: %d callbacks sent, %d got 200, %d got 503, %d messages in the queue (%d distinct)",
        len(tally.accepted) + len(tally.refused) + len(tally.other),
        len(tally.accepted),
        len(tally.refused),
        len(queued),
        len(set(queued)),
    )
    assert tally.other == []
    assert set(tally.accepted) <= set(queued)  # nothing acknowledged was lost
    assert set(queued) <= set(tally.accepted) | set(tally.refused)  # and nothing else appeared
    assert len(tally.refused) >= 50
