"""Keeping the consumer subscribed when the client and the broker disagree about it.

aio-pika's robust connection restores consumers after a reconnect, but it has been seen to come back without
one, and the client can also believe it consumes while the broker has dropped the consumer (its queue was
deleted and declared again, say). The watchdog checks both sides every few seconds: aio-pika's subscription on
an open channel, and the broker's own view of the queue (no consumer at all, or messages waiting while we have
room and have received nothing for a while). When the consumer has looked missing for a few seconds it subscribes again
on a fresh channel; `/readyz` reports the gap meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from common.tasks import stop
from common.topology import QUEUE

if TYPE_CHECKING:
    from services.persister.consumer import Consumer

logger = logging.getLogger(__name__)

INTERVAL_S = 2.0
MISSING_GRACE_S = 6.0  # leave aio-pika's own recovery time to act first


class Watchdog:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.stalled = False
        self._missing_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        await stop(self._task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            try:
                await self.check_once()
            except Exception:  # the watchdog must outlive one bad round
                logger.warning("consumer watchdog round failed", exc_info=True)

    async def check_once(self) -> None:
        if await self._healthy():
            self._missing_since = None
            self.stalled = False
            return
        self.stalled = True
        now = time.monotonic()
        if self._missing_since is None:
            self._missing_since = now
            return
        broker = self.consumer.broker
        connected = not broker.connection.is_closed and broker.ready
        if now - self._missing_since < MISSING_GRACE_S or not connected:
            return
        logger.warning("consumer missing at the broker; subscribing again on a new channel")
        await self.consumer.resubscribe()
        self._missing_since = None

    async def _healthy(self) -> bool:
        consumer = self.consumer
        if not await consumer.consuming():
            return False
        view = await self._broker_view()
        if view is None:
            return True  # no evidence either way; the local check passed
        ready, consumers = view
        idle = time.monotonic() - consumer.last_delivery > MISSING_GRACE_S
        return consumers > 0 and not (ready > 0 and idle and consumer.has_room)

    async def _broker_view(self) -> tuple[int, int] | None:
        """(messages ready, consumers) of the queue as the broker sees it; None when it cannot be asked.

        Asked on a throwaway channel: a passive declare of a missing queue closes the channel it runs on.
        """
        try:
            async with asyncio.timeout(3.0):
                probe = await self.consumer.broker.connection.channel(publisher_confirms=False)
                try:
                    queue = await probe.declare_queue(QUEUE, passive=True)
                    result = queue.declaration_result
                    return result.message_count or 0, result.consumer_count or 0
                finally:
                    await probe.close()
        except Exception:  # reconnecting, or the queue is gone for now
            return None
