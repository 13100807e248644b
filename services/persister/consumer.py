"""The subscription to `studio.persister`: taking messages, tracking those in hand, and draining at stop.

What happens to each message is `handling.Handler`'s job; keeping the subscription alive when client and broker
disagree is `watchdog.Watchdog`'s. A message is acknowledged only once its outcome is durable, so a crash before
that redelivers it, and redelivery is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from common.broker import Broker
from common.errors import BrokerUnavailable
from common.topology import QUEUE
from services.persister.watchdog import Watchdog

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 25.0


class Consumer:
    def __init__(
        self, broker: Broker, prefetch: int, handle: Callable[[AbstractIncomingMessage], Awaitable[None]]
    ) -> None:
        self.broker = broker
        self.prefetch = prefetch
        self.handle = handle
        self.channel: AbstractChannel | None = None
        self.queue: AbstractQueue | None = None
        self.tag: str | None = None
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.last_delivery = time.monotonic()
        self.watchdog = Watchdog(self)

    async def start(self) -> None:
        await self._subscribe()
        self.watchdog.start()

    async def _subscribe(self) -> None:
        channel = await self.broker.connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        queue = await channel.get_queue(QUEUE, ensure=True)
        self.tag = await queue.consume(self.on_message)
        self.channel, self.queue = channel, queue

    async def resubscribe(self) -> None:
        """Subscribe again on a fresh channel, then close the old one."""
        old = self.channel
        await self._subscribe()
        self.last_delivery = time.monotonic()
        if old is not None:
            # Messages still in hand from the old channel can no longer be acknowledged; they return to the
            # queue when it closes, and their redelivery is harmless.
            with contextlib.suppress(Exception):
                await old.close()

    @property
    def has_room(self) -> bool:
        return len(self.in_flight) < self.prefetch

    async def consuming(self) -> bool:
        """True while aio-pika holds our subscription on an open channel. Whether the broker still holds it too
        (it cancels a consumer whose queue was deleted) is the watchdog's broker view."""
        return not (
            self.channel is None or self.tag is None or self.channel.is_closed or self.broker.connection.is_closed
        )

    async def check(self) -> None:
        """Readiness: raise when the consumer is not registered at the broker, or looked missing last round."""
        if self.watchdog.stalled or not await self.consuming():
            raise BrokerUnavailable("not consuming studio.persister")

    async def stop(self) -> None:
        """Stop taking messages, let those in hand finish, then close the channel (unacked ones return)."""
        await self.watchdog.stop()
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
        self.last_delivery = time.monotonic()
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            await self.handle(message)
        finally:
            if task is not None:
                self.in_flight.discard(task)
