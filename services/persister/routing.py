"""Where a message goes when an attempt did not settle it: a delay queue for another try, or the dead-letter
queue, carrying why it died.

Two retry schedules share one attempt counter: a failed download (or a generation not yet known, which still
has its download ahead) retries on the short schedule that fits Skytells' output window; anything else
(storage, database, broker, the unexpected) on the long one. The original is acknowledged only once RabbitMQ
has confirmed its copy; when the broker cannot take the copy, the original goes back to the queue instead.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.broker import Broker
from common.errors import BrokerUnavailable
from common.settings import Settings
from common.topology import (
    ATTEMPT_HEADER,
    DEAD_ATTEMPTS_HEADER,
    DEAD_QUEUE,
    DEAD_REASON_HEADER,
    FIRST_FAILURE_HEADER,
    LAST_FAILURE_HEADER,
    RetrySchedule,
    delay_queue_name,
)
from services.persister.metrics import DEAD_LETTERS, EVENTS, RETRIES, Outcome

logger = logging.getLogger(__name__)

MAX_REASON = 500


def attempt_of(message: AbstractIncomingMessage) -> int:
    """Which attempt this delivery is (1 for the first); a garbled header counts as the first."""
    raw = (message.headers or {}).get(ATTEMPT_HEADER, 1)
    return raw if isinstance(raw, int) and raw >= 1 else 1


class Router:
    def __init__(self, settings: Settings, broker: Broker) -> None:
        self.max_attempts = settings.persister_max_attempts
        self.broker = broker
        schedule = RetrySchedule.from_settings(settings)
        self.delays = schedule.long
        self.download_delays = schedule.download

    async def retry_later(
        self, message: AbstractIncomingMessage, attempt: int, reason: str, *, download: bool = False
    ) -> None:
        """Another attempt after the schedule's delay, or the dead-letter queue after the last one."""
        delays = self.download_delays if download else self.delays
        if attempt >= self.max_attempts or attempt > len(delays):
            logger.error("giving up after %d attempts: %s", attempt, reason)
            await self.dead_letter(message, attempt, reason)
            return
        delay = delays[attempt - 1]
        logger.warning("attempt %d failed, retrying in %gs: %s", attempt, delay, reason)
        headers = {**self._failure_headers(message), ATTEMPT_HEADER: attempt + 1, "x-last-error": reason[:MAX_REASON]}
        if await self._forward(message, delay_queue_name(delay), headers):
            EVENTS.labels(Outcome.RETRIED).inc()
            RETRIES.inc()

    async def dead_letter(self, message: AbstractIncomingMessage, attempt: int, reason: str) -> None:
        """Into `studio.persister.dead` with why, after how many attempts, and since when it failed."""
        headers = {
            **self._failure_headers(message),
            DEAD_REASON_HEADER: reason[:MAX_REASON],
            DEAD_ATTEMPTS_HEADER: attempt,
        }
        if await self._forward(message, DEAD_QUEUE, headers):
            EVENTS.labels(Outcome.DEAD_LETTERED).inc()
            DEAD_LETTERS.inc()

    @staticmethod
    def _failure_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        headers = dict(message.headers or {})
        headers.setdefault(FIRST_FAILURE_HEADER, now)
        headers[LAST_FAILURE_HEADER] = now
        return headers

    async def _forward(self, message: AbstractIncomingMessage, queue: str, headers: dict[str, Any]) -> bool:
        """Publish a copy to `queue`, then acknowledge the original; False when the broker refused the copy."""
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            # `redrive` names dead messages by id; one that came without any gets one here.
            message_id=message.message_id or f"unnamed-{uuid.uuid4()}",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self.broker.publish_to_queue(queue, copy)
        except BrokerUnavailable:
            logger.warning("could not move the message to %s; returning it to the queue", queue)
            EVENTS.labels(Outcome.RETURNED).inc()
            await message.nack(requeue=True)
            return False
        await message.ack()
        return True
