"""The API process: `create_app(settings)` wires resources and routes; `main()` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from aiohttp import web

from common import resources
from common.settings import API_REQUIRED, Settings
from common.web import add_fallback, add_probes, boot, error_middleware, expect_handler, run
from services.api import cors, streams, views
from services.api.auth import Authenticator
from services.api.bodies import MAX_BODY
from services.api.feed import live_updates
from services.api.jwks import Jwks
from services.api.keys import AUTH, BROKER, POOL, SETTINGS, SKYTELLS
from services.api.page import add_page

# The identity provider's keys are fetched while a request waits for them: a bounded wait.
JWKS_TIMEOUT_S = 5.0


async def _auth(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.auth_jwks_url:
        app[AUTH] = Authenticator(settings)
        yield
        return
    async with httpx.AsyncClient(timeout=JWKS_TIMEOUT_S) as http:
        app[AUTH] = Authenticator(settings, Jwks(settings.auth_jwks_url, http, refresh_s=settings.auth_jwks_refresh_s))
        yield


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware, cors.preflight_middleware], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(
        resources.database(SETTINGS, POOL, migrate=True, stateless=True)
    )  # the API also migrates at start
    app.cleanup_ctx.append(resources.skytells(SETTINGS, SKYTELLS))
    app.cleanup_ctx.append(_auth)
    # RabbitMQ carries live updates only: the API answers without it (streams then fall back on re-reading).
    app.cleanup_ctx.append(resources.broker_link(SETTINGS, BROKER))
    app.cleanup_ctx.append(live_updates)
    app.on_response_prepare.append(cors.add_cors_headers)
    add_probes(app, {"database": resources.database_probe(app, POOL)})
    app.router.add_post("/api/generate", views.generate, expect_handler=expect_handler)
    app.router.add_get("/api/predictions/{id}", views.get_prediction, expect_handler=expect_handler)
    app.router.add_get("/api/predictions/{id}/events", streams.generation_events, expect_handler=expect_handler)
    app.router.add_post("/api/predictions/{id}/cancel", views.cancel_prediction, expect_handler=expect_handler)
    app.router.add_get("/api/predictions/{id}/deliveries", views.list_deliveries, expect_handler=expect_handler)
    app.router.add_post(
        "/api/predictions/{id}/deliveries/{deliveryId}/redeliver", views.redeliver, expect_handler=expect_handler
    )
    app.router.add_get("/api/webhooks/secret", views.webhook_secret, expect_handler=expect_handler)
    app.router.add_post("/api/webhooks/secret/rotate", views.rotate_webhook_secret, expect_handler=expect_handler)
    app.router.add_get("/api/generations", views.list_generations, expect_handler=expect_handler)
    app.router.add_get("/api/generations/events", streams.user_events, expect_handler=expect_handler)
    app.router.add_get("/api/me", views.me, expect_handler=expect_handler)
    app.router.add_get("/api/openapi.json", views.openapi_document, expect_handler=expect_handler)
    add_page(app, settings)
    add_fallback(app)
    return app


def main() -> None:
    settings = boot("api", API_REQUIRED)
    run(create_app(settings), settings.bind_host, settings.api_port, use_uvloop=settings.uvloop)
