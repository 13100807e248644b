"""The notifier process: an aiohttp app (health, metrics) whose clean-up contexts own the dispatcher.

`web.run_app` owns the lifecycle, so SIGTERM unwinds the contexts in reverse: the dispatcher stops claiming,
lets the attempts in flight finish and frees what it held but never attempted; then the HTTP client and the
pool close.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from common import resources
from common.keys import POOL, SETTINGS
from common.presign import OutputLinks
from common.probes import add_probes
from common.process import boot, run
from common.settings import NOTIFIER_REQUIRED, Settings
from common.tasks import background
from common.web import add_fallback, error_middleware
from services.notifier.dispatcher import MAX_IN_FLIGHT, Dispatcher
from services.notifier.keys import DISPATCHER, SESSION
from services.notifier.sender import Sender

logger = logging.getLogger(__name__)


async def _http(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # trust_env=False: no proxy from the environment may sit between the address checks and the receiver. No
    # cookies: each delivery stands alone, whatever a receiver sets.
    session = app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT),
        timeout=aiohttp.ClientTimeout(total=settings.notify_timeout_s),
        trust_env=False,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    yield
    await session.close()


async def _dispatcher(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    sender = Sender(
        app[SESSION],
        OutputLinks.from_settings(settings),  # the payload's URLs are made as each attempt is sent
        settings.notify_allow_hosts,
        settings.notify_timeout_s,
        settings.notify_rotation_overlap_s,
        settings.notify_retry_max_s,
    )
    dispatcher = app[DISPATCHER] = Dispatcher(settings, app[POOL], sender)
    async with background(dispatcher.run(), "notifier-dispatch"):
        yield
    await dispatcher.stop()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([resources.database(stateless=True), _http, _dispatcher])

    async def dispatching() -> None:
        if not app[DISPATCHER].running:
            raise RuntimeError("not dispatching")

    add_probes(app, {"database": resources.database_probe(app), "dispatcher": dispatching})
    add_fallback(app)
    return app


def main() -> None:
    settings = boot("notifier", NOTIFIER_REQUIRED)
    run(create_app(settings), settings.bind_host, settings.notifier_port, use_uvloop=settings.uvloop)
