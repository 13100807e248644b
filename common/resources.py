"""What several services open, built in one place from settings so a setting means the same in each of them.

Each resource is an aiohttp clean-up context (code before `yield` opens it, after closes it) stored under the
service's typed key, with the readiness probe that goes with it:

- `database(key)`: the asyncpg pool (`DATABASE_URL`, `DATABASE_POOL_SIZE`: `open_pool`), optionally migrating
  first; `database_probe`.
- `skytells(key)`: the Skytells client (`SKYTELLS_BASE_URL`, `SKYTELLS_API_KEY`, `SKYTELLS_TIMEOUT_S`).
- `broker_link(key)`: a link to RabbitMQ that lets the process start while the broker is down and connects
  once it answers (`AMQP_URL`, one node of it or another, `AMQP_QUORUM_SIZE`, the retry schedule's delay
  queues); `broker_probe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web

from common.broker import Broker, RetrySchedule
from common.db.pool import create_pool
from common.errors import BrokerUnavailable
from common.events import PredictionEvent
from common.migrate import apply_migrations
from common.settings import Settings
from common.skytells import SkytellsClient

logger = logging.getLogger(__name__)

CleanupContext = Callable[[web.Application], AsyncIterator[None]]
Check = Callable[[], Awaitable[None]]


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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.broker is not None:
            await self.broker.close()


async def open_pool(settings: Settings, *, stateless: bool = False) -> asyncpg.Pool:
    """The pool a service queries through, as `DATABASE_URL` and `DATABASE_POOL_SIZE` say (the benches' ceilings
    open theirs here too, so both sides of a ratio wait for connections alike). `stateless`: see `create_pool`."""
    return await create_pool(settings.database_url, max_size=settings.database_pool_size, stateless=stateless)


def database(
    settings_key: web.AppKey[Settings],
    key: web.AppKey[asyncpg.Pool],
    *,
    migrate: bool = False,
    stateless: bool = False,
) -> CleanupContext:
    """`stateless`: see `create_pool`."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[settings_key]
        if migrate:  # on a connection of its own: the migration lock is a session lock
            conn = await asyncpg.connect(settings.database_url)
            try:
                await apply_migrations(conn)  # idempotent, and locked against replicas starting together
            finally:
                await conn.close()
        pool = await open_pool(settings, stateless=stateless)
        app[key] = pool
        yield
        await pool.close()

    return context


def skytells(settings_key: web.AppKey[Settings], key: web.AppKey[SkytellsClient]) -> CleanupContext:
    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[settings_key]
        client = app[key] = SkytellsClient(
            settings.skytells_base_url, settings.skytells_api_key, timeout=settings.skytells_timeout_s
        )
        yield
        await client.aclose()

    return context


def broker_link(settings_key: web.AppKey[Settings], key: web.AppKey[BrokerLink]) -> CleanupContext:
    async def context(app: web.Application) -> AsyncIterator[None]:
        # Clean-up runs only after aiohttp has stopped listening and let in-flight requests finish, so closing
        # the channel here never cuts a publish short.
        settings = app[settings_key]
        delays = RetrySchedule.from_settings(settings).all
        link = app[key] = BrokerLink(settings.amqp_url, delays, settings.amqp_quorum_size)
        link.start()
        yield
        await link.close()

    return context


def database_probe(app: web.Application, key: web.AppKey[asyncpg.Pool]) -> Check:
    async def check() -> None:
        async with app[key].acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")

    return check


def broker_probe(app: web.Application, key: web.AppKey[BrokerLink]) -> Check:
    async def check() -> None:
        link = app[key]
        if link.broker is None or not link.ready:
            raise BrokerUnavailable("not connected to RabbitMQ")
        # Connected is not enough: under a memory or disk alarm every publish (a callback's, a retry's) would
        # wait for a confirm that does not come.
        await link.broker.check_unblocked()

    return check
