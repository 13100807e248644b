"""The API process: `create_app(settings)` wires resources and routes; `main()` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from aiohttp import web

from common.db.pool import create_pool
from common.migrate import apply_migrations
from common.settings import API_REQUIRED, Settings
from common.skytells import SkytellsClient
from common.web import add_probes, boot, error_middleware, expect_handler, run
from services.api import views
from services.api.auth import Authenticator
from services.api.bodies import MAX_BODY
from services.api.jwks import Jwks
from services.api.keys import AUTH, POOL, SETTINGS, SKYTELLS

# The identity provider's keys are fetched while a request waits for them: a bounded wait.
JWKS_TIMEOUT_S = 5.0


async def _database(app: web.Application) -> AsyncIterator[None]:
    pool = await create_pool(app[SETTINGS].database_url)
    async with pool.acquire() as conn:
        await apply_migrations(conn)  # SPEC: the API also migrates at start-up (idempotent, locked)
    app[POOL] = pool
    yield
    await pool.close()


async def _skytells(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[SKYTELLS] = SkytellsClient(
        settings.skytells_base_url, settings.skytells_api_key, timeout=settings.skytells_timeout_s
    )
    yield
    await app[SKYTELLS].aclose()


async def _auth(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.auth_jwks_url:
        app[AUTH] = Authenticator(settings)
        yield
        return
    async with httpx.AsyncClient(timeout=JWKS_TIMEOUT_S) as http:
        app[AUTH] = Authenticator(settings, Jwks(settings.auth_jwks_url, http))
        yield


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_skytells)
    app.cleanup_ctx.append(_auth)

    async def database_ready() -> None:
        async with app[POOL].acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")

    add_probes(app, {"database": database_ready})
    app.router.add_post("/api/generate", views.generate, expect_handler=expect_handler)
    app.router.add_get("/api/predictions/{id}", views.get_prediction, expect_handler=expect_handler)
    app.router.add_post("/api/predictions/{id}/cancel", views.cancel_prediction, expect_handler=expect_handler)
    app.router.add_get("/api/generations", views.list_generations, expect_handler=expect_handler)
    app.router.add_get("/api/openapi.json", views.openapi_document, expect_handler=expect_handler)
    return app


def main() -> None:
    settings = boot("api", API_REQUIRED)
    run(create_app(settings), settings.api_port)
