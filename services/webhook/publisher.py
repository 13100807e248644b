"""The gateway's link to RabbitMQ: it comes up without the broker and connects once the broker answers.

`Broker.connect` raises when RabbitMQ is down; a gateway that crashed for that would be restarted in a loop by
its supervisor and answer nothing meanwhile. Instead the process starts, `/healthz` answers, `/readyz` and
every callback say 503 (so Skytells retries), and a background task keeps trying. Once connected, the robust
connection reconnects by itself after any later outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from common.broker import Broker
from common.errors import BrokerUnavailable
from common.events import PredictionEvent

logger = logging.getLogger(__name__)


class BrokerLink:
    def __init__(self, url: str, delays: Sequence[float], retry_interval_s: float = 1.0) -> None:
        self.url = url
        self.delays = tuple(delays)
        self.retry_interval_s = retry_interval_s
        self.broker: Broker | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="broker-connect")

    async def _connect(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                self.broker = await Broker.connect(self.url, self.delays)
            except Exception as exc:  # refused, timed out, handshake or declaration failed: all worth retrying
                if attempt == 1 or attempt % 30 == 0:  # say it once, then now and then, not every second
                    logger.warning("RabbitMQ not reachable (attempt %d), retrying: %r", attempt, exc)
                await asyncio.sleep(self.retry_interval_s)
            else:
                logger.info("connected to RabbitMQ", extra={"attempt": attempt})
                return

    @property
    def ready(self) -> bool:
        return self.broker is not None and self.broker.ready

    async def publish_event(self, event: PredictionEvent) -> None:
        """Return once RabbitMQ confirmed the event; raise BrokerUnavailable otherwise (never wait > 5 s)."""
        if self.broker is None:
            raise BrokerUnavailable("not connected to RabbitMQ yet")
        await self.broker.publish_event(event)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.broker is not None:
            await self.broker.close()
