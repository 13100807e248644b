"""The persister process: an aiohttp app (health, metrics) whose clean-up contexts own the consumer and the
reconciler.

`web.run_app` owns the lifecycle, so SIGTERM unwinds the contexts in reverse: the reconciler stops, the
consumer stops taking messages and drains the ones in hand, then the broker, Skytells client, HTTP client,
S3 client and pool close. `python -m services.persister redrive` moves dead messages back instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator

import httpx
from aiohttp import web

from common.broker import Broker
from common.db.pool import create_pool
from common.errors import BrokerUnavailable
from common.settings import PERSISTER_REQUIRED, Settings
from common.skytells import SkytellsClient
from common.storage import check_bucket, open_s3
from common.web import add_probes, boot, error_middleware, run
from services.persister import redrive
from services.persister.consumer import Consumer
from services.persister.handling import Handler
from services.persister.keys import BROKER, CONSUMER, HTTP, POOL, S3, SETTINGS, SKYTELLS
from services.persister.processor import Processor
from services.persister.reconciler import Reconciler
from services.persister.routing import Router, all_delays

logger = logging.getLogger(__name__)


async def _database(app: web.Application) -> AsyncIterator[None]:
    app[POOL] = await create_pool(app[SETTINGS].database_url)
    yield
    await app[POOL].close()


async def _storage(app: web.Application) -> AsyncIterator[None]:
    async with open_s3(app[SETTINGS]) as client:
        app[S3] = client
        yield


async def _http(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # The read timeout bounds each wait for bytes, not the whole download: a large output may take a while.
    timeout = httpx.Timeout(
        settings.download_read_timeout_s,
        connect=settings.download_connect_timeout_s,
        pool=settings.download_connect_timeout_s,
    )
    # trust_env=False: no proxy from the environment may sit between the SSRF checks and the CDN.
    app[HTTP] = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=50), trust_env=False)
    yield
    await app[HTTP].aclose()


async def _skytells(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[SKYTELLS] = SkytellsClient(settings.skytells_base_url, settings.skytells_api_key or "")
    yield
    await app[SKYTELLS].aclose()


async def _broker(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[BROKER] = await Broker.connect(settings.amqp_url, all_delays(settings))
    yield
    await app[BROKER].close()


async def _consumer(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    handler = Handler(Processor(settings, app[POOL], app[S3], app[HTTP]), Router(settings, app[BROKER]))
    consumer = Consumer(app[BROKER], settings.persister_prefetch, handler)
    app[CONSUMER] = consumer
    await consumer.start()
    yield
    await consumer.stop()


async def _reconciler(app: web.Application) -> AsyncIterator[None]:
    if not app[SETTINGS].skytells_api_key:
        logger.warning("SKYTELLS_API_KEY is not set: the reconciler is off, lost callbacks will not be recovered")
        yield
        return
    reconciler = Reconciler(app[SETTINGS], app[POOL], app[BROKER], app[SKYTELLS])
    task = asyncio.get_running_loop().create_task(reconciler.run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    for context in (_database, _storage, _http, _skytells, _broker, _consumer, _reconciler):
        app.cleanup_ctx.append(context)

    async def database_ready() -> None:
        async with app[POOL].acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")

    async def broker_ready() -> None:
        if not app[BROKER].ready:
            raise BrokerUnavailable("not connected to RabbitMQ")

    async def storage_ready() -> None:
        await check_bucket(app[S3], settings.s3_bucket)

    async def consumer_ready() -> None:
        await app[CONSUMER].check()

    add_probes(
        app,
        {"database": database_ready, "broker": broker_ready, "storage": storage_ready, "consumer": consumer_ready},
    )
    return app


def main() -> None:
    settings = boot("persister", PERSISTER_REQUIRED)
    if sys.argv[1:2] == ["redrive"]:
        sys.stdout.write(asyncio.run(redrive.command(settings, sys.argv[2:])))
        return
    if sys.argv[1:]:
        sys.exit(f"unknown command {' '.join(sys.argv[1:])!r}; usage: python -m services.persister [redrive ...]")
    run(create_app(settings), settings.persister_port)
