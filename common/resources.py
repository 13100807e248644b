"""What several services open, built in one place from settings so a setting means the same in each of them.

Each resource is an aiohttp clean-up context (code before `yield` opens it, after closes it) stored under its
typed key from `common/keys.py`, with the readiness probe that goes with it; a `create_app` is the list of the
contexts it enters:

- `database(...)`: the asyncpg pool (`DATABASE_URL`, `DATABASE_POOL_SIZE`: `open_pool`), optionally migrating
  first; `database_probe`.
- `skytells`: the Skytells client (`SKYTELLS_BASE_URL`, `SKYTELLS_API_KEY`, `SKYTELLS_TIMEOUT_S`).
- `http_client`: the HTTP client outputs are downloaded with (`DOWNLOAD_*_TIMEOUT_S`).
- `storage`: the S3 client (`S3_*`, `AWS_*`).
- `broker_link`: a link to RabbitMQ that lets the process start while the broker is down and connects once it
  answers (`AMQP_URL`, one node of it or another, `AMQP_QUORUM_SIZE`, the retry schedule's delay queues);
  `broker_probe`.
- `update_publisher`: the live-update publisher, attached to RabbitMQ once it answers.

`when_connected` runs a service's own start-up once RabbitMQ first answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
from aiohttp import web

from common.broker import Broker
from common.broker_link import BrokerLink
from common.db.pool import create_pool
from common.errors import BrokerUnavailable
from common.keys import BROKER, HTTP, POOL, S3, SETTINGS, SKYTELLS, UPDATES
from common.migrate import apply_migrations
from common.probes import Check
from common.settings import Settings
from common.skytells import SkytellsClient
from common.storage import open_s3
from common.tasks import background
from common.topology import RetrySchedule
from common.updates import UpdatePublisher

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


async def open_pool(settings: Settings, *, stateless: bool = False) -> asyncpg.Pool:
    """The pool a service queries through, as `DATABASE_URL` and `DATABASE_POOL_SIZE` say (the benches' ceilings
    open theirs here too, so both sides of a ratio wait for connections alike). `stateless`: see `create_pool`."""
    return await create_pool(settings.database_url, max_size=settings.database_pool_size, stateless=stateless)


def database(*, migrate: bool = False, stateless: bool = False) -> CleanupContext:
    """`stateless`: see `create_pool`."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        if migrate:  # on a connection of its own: the migration lock is a session lock
            conn = await asyncpg.connect(settings.database_url)
            try:
                await apply_migrations(conn)  # idempotent, and locked against replicas starting together
            finally:
                await conn.close()
        pool = await open_pool(settings, stateless=stateless)
        app[POOL] = pool
        yield
        await pool.close()

    return context


async def skytells(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client = app[SKYTELLS] = SkytellsClient(
        settings.skytells_base_url, settings.skytells_api_key, timeout=settings.skytells_timeout_s
    )
    yield
    await client.aclose()


async def http_client(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # The read timeout bounds each wait for bytes, not the whole download: a large output may take a while.
    timeout = httpx.Timeout(
        settings.download_read_timeout_s,
        connect=settings.download_connect_timeout_s,
        pool=settings.download_connect_timeout_s,
    )
    # trust_env=False: no proxy from the environment may sit between the SSRF checks and the CDN.
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=50), trust_env=False) as http:
        app[HTTP] = http
        yield


async def storage(app: web.Application) -> AsyncIterator[None]:
    async with open_s3(app[SETTINGS]) as client:
        app[S3] = client
        yield


async def broker_link(app: web.Application) -> AsyncIterator[None]:
    # Clean-up runs only after aiohttp has stopped listening and let in-flight requests finish, so closing
    # the channel here never cuts a publish short.
    settings = app[SETTINGS]
    delays = RetrySchedule.from_settings(settings).all
    link = app[BROKER] = BrokerLink(settings.amqp_url, delays, settings.amqp_quorum_size)
    link.start()
    yield
    await link.close()


async def when_connected(app: web.Application, start: Callable[[Broker], Awaitable[Any]]) -> None:
    """Run `start` once RabbitMQ first answers: the process comes up (and says why it is not ready) without it."""
    await start(await app[BROKER].wait_connected())


async def update_publisher(app: web.Application) -> AsyncIterator[None]:
    """The live-update publisher: every change the process commits is announced on `studio.updates`."""
    publisher = app[UPDATES] = UpdatePublisher()
    publisher.start()
    attach = when_connected(app, lambda broker: publisher.attach(broker.connection))
    async with background(attach, "updates-attach"):
        yield
    await publisher.close()


def database_probe(app: web.Application) -> Check:
    async def check() -> None:
        async with app[POOL].acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")

    return check


def broker_probe(app: web.Application) -> Check:
    async def check() -> None:
        link = app[BROKER]
        if link.broker is None or not link.ready:
            raise BrokerUnavailable("not connected to RabbitMQ")
        # Connected is not enough: under a memory or disk alarm every publish (a callback's, a retry's) would
        # wait for a confirm that does not come.
        await link.broker.check_unblocked()

    return check
