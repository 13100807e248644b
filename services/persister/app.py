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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
from aiohttp import web

from common import resources
from common.broker import Broker
from common.errors import BrokerUnavailable
from common.settings import PERSISTER_REQUIRED, Settings
from common.storage import check_bucket
from common.updates import UpdatePublisher
from common.web import add_fallback, add_probes, boot, error_middleware, run
from services.persister import redrive
from services.persister.consumer import Consumer
from services.persister.handling import Handler
from services.persister.keys import BROKER, CONSUMER, HTTP, POOL, S3, SETTINGS, SKYTELLS, UPDATES
from services.persister.processor import Processor
from services.persister.reconciler import Reconciler
from services.persister.routing import Router
from services.persister.spool import Spool, drain

logger = logging.getLogger(__name__)


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


async def _when_connected(app: web.Application, start: Callable[[Broker], Awaitable[None]]) -> None:
    """Run `start` once RabbitMQ first answers: the process comes up (and says why it is not ready) without it."""
    await start(await app[BROKER].wait_connected())


async def _updates(app: web.Application) -> AsyncIterator[None]:
    """The live-update publisher: every change the persister commits is announced on `studio.updates`."""
    publisher = app[UPDATES] = UpdatePublisher()
    publisher.start()
    attaching = asyncio.get_running_loop().create_task(
        _when_connected(app, lambda broker: publisher.attach(broker.connection))
    )
    yield
    attaching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await attaching
    await publisher.close()


async def _consumer(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    spool = Spool(Path(settings.spool_dir), settings.spool_max_bytes, settings.output_max_bytes)
    spool.open()
    processor = Processor(settings, app[POOL], app[S3], app[HTTP], notify=app[UPDATES].notify, spool=spool)
    draining = asyncio.get_running_loop().create_task(drain(spool, processor.settle_spooled))
    consumer: Consumer | None = None

    async def start(broker: Broker) -> None:
        nonlocal consumer
        consumer = Consumer(broker, settings.persister_prefetch, Handler(processor, Router(settings, broker)))
        await consumer.start()
        app[CONSUMER] = consumer

    starting = asyncio.get_running_loop().create_task(_when_connected(app, start))
    yield
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    if consumer is not None:
        await consumer.stop()
    draining.cancel()  # what it has not put stays in the spool for the next start
    with contextlib.suppress(asyncio.CancelledError):
        await draining
    spool.close()


async def _reconciler(app: web.Application) -> AsyncIterator[None]:
    if not app[SETTINGS].skytells_api_key:
        logger.warning("SKYTELLS_API_KEY is not set: the reconciler is off, lost callbacks will not be recovered")
        yield
        return

    async def start(broker: Broker) -> None:
        await Reconciler(app[SETTINGS], app[POOL], broker, app[SKYTELLS], notify=app[UPDATES].notify).run()

    task = asyncio.get_running_loop().create_task(_when_connected(app, start))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[CONSUMER] = None  # the consumer, once RabbitMQ has answered
    for context in (
        # Stateless: no query leaves session state, so asyncpg's reset round trip on every release is skipped; the
        # reconciler's session lock is released explicitly, or its connection ended (reconciler.py).
        resources.database(SETTINGS, POOL, stateless=True),
        resources.storage(SETTINGS, S3),
        _http,
        resources.skytells(SETTINGS, SKYTELLS),
        resources.broker_link(SETTINGS, BROKER),
        _updates,
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
            "database": resources.database_probe(app, POOL),
            "broker": resources.broker_probe(app, BROKER),
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
