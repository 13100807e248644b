"""Consuming `studio.persister`: each message is processed, retried through a delay queue, or dead-lettered.

A message is acknowledged only after its outcome is durable: the row is written, or its retry or dead-letter
copy is confirmed by RabbitMQ. A crash before that redelivers it, and redelivery is harmless.

Two retry schedules share one attempt counter: a failed download (or a generation not yet known, which still
has its download ahead) retries on the short schedule that fits Skytells' output window; anything else
(storage, database, broker, the unexpected) on the long one.

aio-pika's robust connection restores consumers after a reconnect, but it has been seen to come back without
one, and the client can also believe it consumes while the broker has dropped the consumer (its queue was
deleted and declared again, say). A watchdog checks both sides: the consumer tag on our channel, and the
broker's own view of the queue (no consumer at all, or messages waiting while we have room and have received
nothing for a while). When the consumer has looked missing for a few seconds it subscribes again on a fresh
channel; `/readyz` reports the gap meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from common import log as logs
from common.broker import (
    ATTEMPT_HEADER,
    DEAD_QUEUE,
    QUEUE,
    Broker,
    RetrySchedule,
    delay_queue_name,
)
from common.errors import BrokerUnavailable, GenerationNotYetKnown, TransientError, UpstreamUnavailable
from common.events import PredictionEvent
from common.settings import Settings
from services.persister.metrics import DEAD_LETTERS, EVENTS, RETRIES, Outcome
from services.persister.processor import Processor

logger = logging.getLogger(__name__)

WATCHDOG_INTERVAL_S = 2.0
MISSING_GRACE_S = 6.0  # leave aio-pika's own recovery time to act first
DRAIN_TIMEOUT_S = 25.0


def _attempt(message: AbstractIncomingMessage) -> int:
    """Which attempt this delivery is (1 for the first); a garbled header counts as the first."""
    raw = (message.headers or {}).get(ATTEMPT_HEADER, 1)
    return raw if isinstance(raw, int) and raw >= 1 else 1


def _database_error(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError)


class Consumer:
    def __init__(self, settings: Settings, broker: Broker, processor: Processor) -> None:
        self.settings = settings
        self.broker = broker
        self.processor = processor
        schedule = RetrySchedule.from_settings(settings)
        self.delays = list(schedule.long)
        self.download_delays = list(schedule.download)
        self.channel: AbstractChannel | None = None
        self.queue: AbstractQueue | None = None
        self.tag: str | None = None
        self.in_flight: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._missing_since: float | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._last_delivery = time.monotonic()
        self._stalled = False

    async def start(self) -> None:
        await self._subscribe()
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _subscribe(self) -> None:
        channel = await self.broker.connection.channel()
        await channel.set_qos(prefetch_count=self.settings.persister_prefetch)
        queue = await channel.get_queue(QUEUE, ensure=True)
        self.tag = await queue.consume(self.on_message)
        self.channel, self.queue = channel, queue

    async def consuming(self) -> bool:
        """True when the broker channel really holds our consumer (not just aio-pika's memory of it)."""
        if self.channel is None or self.tag is None or self.channel.is_closed or self.broker.connection.is_closed:
            return False
        try:
            async with asyncio.timeout(1.0):
                underlay = await self.channel.get_underlay_channel()
        except (TimeoutError, Exception):  # reconnecting, or the channel is gone
            return False
        # The concrete aiormq channel keeps the consumers the broker confirmed; the abstract type does not say so.
        consumers: dict[str, Any] = getattr(underlay, "consumers", {})
        return not underlay.is_closed and self.tag in consumers

    async def _broker_view(self) -> tuple[int, int] | None:
        """(messages ready, consumers) of the queue as the broker sees it; None when it cannot be asked.

        Asked on a throwaway channel: a passive declare of a missing queue closes the channel it runs on.
        """
        try:
            async with asyncio.timeout(3.0):
                probe = await self.broker.connection.channel(publisher_confirms=False)
                try:
                    queue = await probe.declare_queue(QUEUE, passive=True)
                    result = queue.declaration_result
                    return result.message_count or 0, result.consumer_count or 0
                finally:
                    await probe.close()
        except Exception:  # reconnecting, or the queue is gone for now
            return None

    async def _healthy(self) -> bool:
        if not await self.consuming():
            return False
        view = await self._broker_view()
        if view is None:
            return True  # no evidence either way; the local check passed
        ready, consumers = view
        idle = time.monotonic() - self._last_delivery > MISSING_GRACE_S
        room = len(self.in_flight) < self.settings.persister_prefetch
        return consumers > 0 and not (ready > 0 and idle and room)

    async def check(self) -> None:
        """Readiness: raise when the consumer is not registered at the broker, or looked missing last round."""
        if self._stalled or not await self.consuming():
            raise BrokerUnavailable("not consuming studio.persister")

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            try:
                await self._watch_once()
            except Exception:  # the watchdog must outlive one bad round
                logger.warning("consumer watchdog round failed", exc_info=True)

    async def _watch_once(self) -> None:
        if await self._healthy():
            self._missing_since = None
            self._stalled = False
            return
        self._stalled = True
        now = time.monotonic()
        if self._missing_since is None:
            self._missing_since = now
            return
        connected = not self.broker.connection.is_closed and self.broker.ready
        if now - self._missing_since < MISSING_GRACE_S or not connected:
            return
        logger.warning("consumer missing at the broker; subscribing again on a new channel")
        old = self.channel
        await self._subscribe()
        self._missing_since = None
        self._last_delivery = time.monotonic()
        if old is not None:
            # Messages still in hand from the old channel can no longer be acknowledged; they return to the
            # queue when it closes, and their redelivery is harmless.
            with contextlib.suppress(Exception):
                await old.close()

    async def stop(self) -> None:
        """Stop taking messages, let those in hand finish, then close the channels (unacked ones return)."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self.queue is not None and self.tag is not None:
            try:
                async with asyncio.timeout(5):
                    await self.queue.cancel(self.tag)
            except Exception:  # the channel may already be gone; unacked messages return to the queue
                logger.warning("could not cancel the consumer cleanly", exc_info=True)
        if self.in_flight:
            logger.info("waiting for %d in-flight messages", len(self.in_flight))
            await asyncio.wait(self.in_flight, timeout=DRAIN_TIMEOUT_S)
        if self.channel is not None and not self.channel.is_closed:
            with contextlib.suppress(Exception):
                await self.channel.close()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self._last_delivery = time.monotonic()
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            await self._handle(message)
        finally:
            if task is not None:
                self.in_flight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            event = PredictionEvent.from_json(message.body)
        except ValueError as exc:
            logger.error("unreadable event dead-lettered: %s", exc, extra={"message_id": message.message_id})
            EVENTS.labels(Outcome.UNREADABLE).inc()
            DEAD_LETTERS.inc()
            await message.reject(requeue=False)  # the queue's dead-letter routing takes it to the dead queue
            return
        attempt = _attempt(message)
        with logs.bind(prediction_id=event.prediction_id, event_id=event.event_id, request_id=event.request_id):
            try:
                outcome = await self.processor.handle(event, retry=attempt > 1 or bool(message.redelivered))
                logger.info(
                    "event processed: %s",
                    outcome,
                    extra={"status": event.status, "attempt": attempt, "source": event.source},
                )
            except (UpstreamUnavailable, GenerationNotYetKnown) as exc:
                await self._retry_later(message, attempt, str(exc), self.download_delays)
                return
            except Exception as exc:  # storage, database, broker or unexpected: the long schedule
                if isinstance(exc, TransientError | OSError | TimeoutError) or _database_error(exc):
                    logger.warning("transient failure: %s", exc)
                else:
                    logger.exception("unexpected failure processing event")
                await self._retry_later(message, attempt, f"{exc.__class__.__name__}: {exc}", self.delays)
                return
            EVENTS.labels(outcome).inc()
            await message.ack()

    async def _retry_later(
        self, message: AbstractIncomingMessage, attempt: int, reason: str, delays: list[float]
    ) -> None:
        headers = {**(message.headers or {}), ATTEMPT_HEADER: attempt + 1, "x-last-error": reason[:500]}
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        last = attempt >= self.settings.persister_max_attempts or attempt > len(delays)
        if last:
            target = DEAD_QUEUE
            logger.error("giving up after %d attempts: %s", attempt, reason)
        else:
            target = delay_queue_name(delays[attempt - 1])
            logger.warning("attempt %d failed, retrying in %gs: %s", attempt, delays[attempt - 1], reason)
        try:
            await self.broker.publish_to_queue(target, copy)
        except BrokerUnavailable:
            logger.warning("could not schedule the retry; returning the message to the queue")
            EVENTS.labels(Outcome.RETURNED).inc()
            await message.nack(requeue=True)
            return
        if last:
            EVENTS.labels(Outcome.DEAD_LETTERED).inc()
            DEAD_LETTERS.inc()
        else:
            EVENTS.labels(Outcome.RETRIED).inc()
            RETRIES.inc()
        await message.ack()
