"""The persister process: an aiohttp app (health, metrics) whose clean-up contexts own the consumer and the
reconciler.

`web.run_app` owns the lifecycle, so SIGTERM unwinds the contexts in reverse: the reconciler stops, the
consumer stops taking messages and drains the ones in hand, then the broker, Skytells client, HTTP client,
S3 client and pool close. `python -m services.persister redrive` moves dead messages back instead.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from common import resources
from common.broker import Broker
from common.errors import BrokerUnavailable
from common.keys import HTTP, POOL, S3, SETTINGS, SKYTELLS, UPDATES
from common.probes import add_probes
from common.process import boot, run
from common.resources import when_connected
from common.settings import PERSISTER_REQUIRED, Settings
from common.storage import check_bucket
from common.tasks import background
from common.web import add_fallback, error_middleware
from services.persister import redrive
from services.persister.consumer import Consumer
from services.persister.handling import Handler
from services.persister.keys import CONSUMER
from services.persister.processor import Processor
from services.persister.reconciler import Reconciler
from services.persister.routing import Router
from services.persister.spool import Spool, drain

logger = logging.getLogger(__name__)


async def _consumer(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    spool = Spool(Path(settings.spool_dir), settings.spool_max_bytes, settings.output_max_bytes)
    spool.open()
    processor = Processor(settings, app[POOL], app[S3], app[HTTP], notify=app[UPDATES].notify, spool=spool)
    consumer: Consumer | None = None

    async def start(broker: Broker) -> None:
        nonlocal consumer
        consumer = Consumer(broker, settings.persister_prefetch, Handler(processor, Router(settings, broker)))
        await consumer.start()
        app[CONSUMER] = consumer

    # What the drain has not put when it is stopped stays in the spool for the next start.
    async with background(drain(spool, processor.settle_spooled), "spool-drain"):
        async with background(when_connected(app, start), "consumer-start"):
            yield
        if consumer is not None:
            await consumer.stop()
    spool.close()


async def _reconciler(app: web.Application) -> AsyncIterator[None]:
    if not app[SETTINGS].skytells_api_key:
        logger.warning("SKYTELLS_API_KEY is not set: the reconciler is off, lost callbacks will not be recovered")
        yield
        return

    async def start(broker: Broker) -> None:
        await Reconciler(app[SETTINGS], app[POOL], broker, app[SKYTELLS], notify=app[UPDATES].notify).run()

    async with background(when_connected(app, start), "reconciler"):
        yield


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[CONSUMER] = None  # the consumer, once RabbitMQ has answered
    for context in (
        # Stateless: no query leaves session state, so asyncpg's reset round trip on every release is skipped; the
        # reconciler's session lock is released explicitly, or its connection ended (reconciler.py).
        resources.database(stateless=True),
        resources.storage,
        resources.http_client,
        resources.skytells,
        resources.broker_link,
        resources.update_publisher,
        _consumer,
        _reconciler,
    ):
        app.cleanup_ctx.append(context)

    async def storage_ready() -> None:
        await check_bucket(app[S3], settings.s3_bucket)

    async def consumer_ready() -> None:
        consumer = app[CONSUMER]
        if consumer is None:
            raise BrokerUnavailable("not consuming yet: waiting for RabbitMQ")
        await consumer.check()

    add_probes(
        app,
        {
            "database": resources.database_probe(app),
            "broker": resources.broker_probe(app),
            "storage": storage_ready,
            "consumer": consumer_ready,
        },
    )
    add_fallback(app)
    return app


def main() -> None:
    settings = boot("persister", PERSISTER_REQUIRED)
    if sys.argv[1:2] == ["redrive"]:
        sys.stdout.write(asyncio.run(redrive.command(settings, sys.argv[2:])))
        return
    if sys.argv[1:]:
        sys.exit(f"unknown command {' '.join(sys.argv[1:])!r}; usage: python -m services.persister [redrive ...]")
    run(create_app(settings), settings.bind_host, settings.persister_port, use_uvloop=settings.uvloop)
