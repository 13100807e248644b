"""The persister process: an aiohttp app (health, metrics) whose clean-up contexts own the consumer.

`web.run_app` owns the lifecycle, so SIGTERM unwinds the contexts in reverse: the consumer stops and drains
first, then the broker, HTTP client, S3 client and pool close.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import httpx
from aiohttp import web

from common import log as logs
from common.broker import Broker, retry_delays
from common.db.pool import create_pool
from common.errors import BrokerUnavailable
from common.settings import PERSISTER_REQUIRED, Settings, SettingsError
from common.storage import check_bucket, open_s3
from common.web import add_probes, error_middleware, run
from services.persister.consumer import Consumer
from services.persister.keys import BROKER, CONSUMER, HTTP, POOL, S3, SETTINGS
from services.persister.processor import Processor


async def _database(app: web.Application) -> AsyncIterator[None]:
    app[POOL] = await create_pool(app[SETTINGS].database_url)
    yield
    await app[POOL].close()


async def _storage(app: web.Application) -> AsyncIterator[None]:
    async with open_s3(app[SETTINGS]) as client:
        app[S3] = client
        yield


async def _http(app: web.Application) -> AsyncIterator[None]:
    app[HTTP] = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0), limits=httpx.Limits(max_connections=50))
    yield
    await app[HTTP].aclose()


async def _broker(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    delays = retry_delays(settings.retry_base_s, settings.retry_max_s, settings.persister_max_attempts)
    app[BROKER] = await Broker.connect(settings.amqp_url, delays)
    yield
    await app[BROKER].close()


async def _consumer(app: web.Application) -> AsyncIterator[None]:
    processor = Processor(app[SETTINGS], app[POOL], app[S3], app[HTTP])
    consumer = Consumer(app[SETTINGS], app[BROKER], processor)
    app[CONSUMER] = consumer
    await consumer.start()
    yield
    await consumer.stop()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    for context in (_database, _storage, _http, _broker, _consumer):
        app.cleanup_ctx.append(context)

    async def database_ready() -> None:
        async with app[POOL].acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")

    async def broker_ready() -> None:
        if not app[BROKER].ready:
            raise BrokerUnavailable("not connected to RabbitMQ")

    async def storage_ready() -> None:
        await check_bucket(app[S3], settings.s3_bucket)

    add_probes(app, {"database": database_ready, "broker": broker_ready, "storage": storage_ready})
    return app


def main() -> None:
    try:
        settings = Settings.from_env(os.environ, required=PERSISTER_REQUIRED)
    except SettingsError as exc:
        sys.exit(str(exc))
    logs.configure("persister", settings.log_level)
    run(create_app(settings), settings.persister_port)
