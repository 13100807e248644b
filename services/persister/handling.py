"""One delivery, start to end: decode it, let the processor apply it, and settle it by its outcome.

The failure classes decide the route: a message that is no event is dead-lettered at once (no retry can make
it readable); a failed download or a generation not yet known retries on the short schedule; anything else on
the long one. A message is acknowledged only once its outcome is durable.
"""

from __future__ import annotations

import logging

from aio_pika.abc import AbstractIncomingMessage

from common import log as logs
from common.db.pool import database_failure
from common.errors import GenerationNotYetKnown, TransientError, UpstreamUnavailable
from common.events import PredictionEvent
from services.persister.metrics import EVENTS, Outcome
from services.persister.processor import Processor
from services.persister.routing import Router, attempt_of

logger = logging.getLogger(__name__)


def _expected(exc: BaseException) -> bool:
    """A failure of something we depend on, worth a warning rather than a traceback."""
    return isinstance(exc, TransientError) or database_failure(exc)


class Handler:
    def __init__(self, processor: Processor, router: Router) -> None:
        self.processor = processor
        self.router = router

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        attempt = attempt_of(message)
        try:
            event = PredictionEvent.from_json(message.body)
        except ValueError as exc:
            logger.error("undecodable event dead-lettered: %s", exc, extra={"message_id": message.message_id})
            EVENTS.labels(Outcome.UNREADABLE).inc()
            await self.router.dead_letter(message, attempt, f"undecodable event: {exc}")
            return
        with logs.bind(prediction_id=event.prediction_id, event_id=event.event_id, request_id=event.request_id):
            try:
                outcome = await self.processor.handle(event)
            except (UpstreamUnavailable, GenerationNotYetKnown) as exc:
                await self.router.retry_later(message, attempt, str(exc), download=True)
                return
            except Exception as exc:  # storage, database, broker or unexpected: the long schedule
                if _expected(exc):
                    logger.warning("transient failure: %s", exc)
                else:
                    logger.exception("unexpected failure processing event")
                await self.router.retry_later(message, attempt, f"{exc.__class__.__name__}: {exc}")
                return
            logger.info(
                "event processed: %s",
                outcome,
                extra={"status": event.status, "attempt": attempt, "source": event.source},
            )
            EVENTS.labels(outcome).inc()
            await message.ack()
