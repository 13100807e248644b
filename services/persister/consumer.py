"""Consuming `studio.persister`: each message is processed, retried through a delay queue, or dead-lettered.

A message is acknowledged only after its outcome is durable: the row is written, or its retry or dead-letter
copy is confirmed by RabbitMQ. A crash before that redelivers it, and redelivery is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from common import log as logs
from common.broker import ATTEMPT_HEADER, DEAD_QUEUE, QUEUE, Broker, delay_queue_name, retry_delays
from common.errors import BrokerUnavailable, TransientError
from common.events import PredictionEvent
from common.settings import Settings
from services.persister.processor import Processor

logger = logging.getLogger(__name__)


def _attempt(message: AbstractIncomingMessage) -> int:
    """Which attempt this delivery is (1 for the first); a garbled header counts as the first."""
    raw = (message.headers or {}).get(ATTEMPT_HEADER, 1)
    return raw if isinstance(raw, int) and raw >= 1 else 1


class Consumer:
    def __init__(self, settings: Settings, broker: Broker, processor: Processor) -> None:
        self.settings = settings
        self.broker = broker
        self.processor = processor
        self.delays = retry_delays(settings.retry_base_s, settings.retry_max_s, settings.persister_max_attempts)
        self.channel: AbstractChannel | None = None
        self.queue: AbstractQueue | None = None
        self.tag: str | None = None
        self.in_flight: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.channel = await self.broker.connection.channel()
        await self.channel.set_qos(prefetch_count=self.settings.persister_prefetch)
        self.queue = await self.channel.get_queue(QUEUE, ensure=True)
        self.tag = await self.queue.consume(self.on_message)

    async def stop(self) -> None:
        """Stop taking messages, let those in hand finish, then close the channel."""
        if self.queue is not None and self.tag is not None:
            try:
                await self.queue.cancel(self.tag)
            except Exception:  # the channel may already be gone; unacked messages return to the queue
                logger.warning("could not cancel the consumer cleanly", exc_info=True)
        if self.in_flight:
            await asyncio.wait(self.in_flight, timeout=25)
        if self.channel is not None and not self.channel.is_closed:
            await self.channel.close()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
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
            await message.reject(requeue=False)  # the queue's dead-letter routing takes it to the dead queue
            return
        attempt = _attempt(message)
        with logs.bind(prediction_id=event.prediction_id, event_id=event.event_id, request_id=event.request_id):
            try:
                outcome = await self.processor.handle(event)
                logger.info("event processed: %s", outcome, extra={"status": event.status, "attempt": attempt})
            except TransientError as exc:
                await self._retry_later(message, attempt, str(exc))
                return
            except Exception as exc:
                logger.exception("unexpected failure processing event")
                await self._retry_later(message, attempt, f"unexpected: {exc!r}")
                return
        await message.ack()

    async def _retry_later(self, message: AbstractIncomingMessage, attempt: int, reason: str) -> None:
        headers = {**(message.headers or {}), ATTEMPT_HEADER: attempt + 1, "x-last-error": reason[:500]}
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        if attempt >= self.settings.persister_max_attempts:
            target = DEAD_QUEUE
            logger.error("giving up after %d attempts: %s", attempt, reason)
        else:
            target = delay_queue_name(self.delays[attempt - 1])
            logger.warning("attempt %d failed, retrying in %gs: %s", attempt, self.delays[attempt - 1], reason)
        try:
            await self.broker.publish_to_queue(target, copy)
        except BrokerUnavailable:
            logger.warning("could not schedule the retry; returning the message to the queue")
            await message.nack(requeue=True)
            return
        await message.ack()
