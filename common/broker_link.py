"""A process's link to RabbitMQ, which lets it start while the broker is down."""

from __future__ import annotations

import asyncio
import logging

from common.broker import Broker
from common.errors import BrokerUnavailable
from common.events import PredictionEvent
from common.tasks import stop

logger = logging.getLogger(__name__)


class BrokerLink:
    """A process's link to RabbitMQ: it comes up without the broker and connects once the broker answers.

    `Broker.connect` raises when RabbitMQ is down; a service that crashed for that would be restarted in a loop
    by its supervisor and answer nothing meanwhile. Instead the process starts, `/healthz` answers, `/readyz`
    says 503, and a background task keeps trying. Once connected, the robust connection reconnects by itself
    after any later outage.
    """

    def __init__(self, url: str, delays: tuple[float, ...], quorum_size: int, retry_interval_s: float = 1.0) -> None:
        self.url = url
        self.delays = delays
        self.quorum_size = quorum_size
        self.retry_interval_s = retry_interval_s
        self.broker: Broker | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="broker-connect")

    async def _connect(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                self.broker = await Broker.connect(self.url, self.delays, self.quorum_size)
            except Exception as exc:  # refused, timed out, handshake or declaration failed: all worth retrying
                if attempt == 1 or attempt % 30 == 0:  # say it once, then now and then, not every second
                    logger.warning("RabbitMQ not reachable (attempt %d), retrying: %r", attempt, exc)
                await asyncio.sleep(self.retry_interval_s)
            else:
                logger.info("connected to RabbitMQ", extra={"attempt": attempt})
                self.connected.set()
                return

    async def wait_connected(self) -> Broker:
        """The broker, once RabbitMQ has first answered."""
        await self.connected.wait()
        if self.broker is None:
            raise BrokerUnavailable("connected without a broker")  # cannot happen: set before `connected`
        return self.broker

    @property
    def ready(self) -> bool:
        return self.broker is not None and self.broker.ready

    async def publish_event(self, event: PredictionEvent) -> None:
        """Return once RabbitMQ confirmed the event; raise BrokerUnavailable otherwise (never wait > 5 s)."""
        if self.broker is None:
            raise BrokerUnavailable("not connected to RabbitMQ yet")
        await self.broker.publish_event(event)

    async def close(self) -> None:
        await stop(self._task)
        if self.broker is not None:
            await self.broker.close()
