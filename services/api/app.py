"""The API process: `create_app(settings)` wires resources and routes; `main()` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from aiohttp import web

from common import resources
from common.keys import SETTINGS, SKYTELLS
from common.presign import OutputLinks
from common.probes import add_probes
from common.process import boot, run
from common.settings import API_REQUIRED, Settings
from common.web import add_fallback, error_middleware, expect_handler
from services.api import cors, views, webhooks
from services.api.auth import Authenticator
from services.api.bodies import MAX_BODY
from services.api.jwks import Jwks
from services.api.keys import AUTH, LINKS, MODELS
from services.api.live import streams
from services.api.live.feed import live_updates
from services.api.models import ModelCatalog
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


async def _catalog(app: web.Application) -> AsyncIterator[None]:
    """The process's model catalog; its reads under way are cancelled at the end."""
    catalog = app[MODELS] = ModelCatalog(app[SKYTELLS], app[SETTINGS].models_cache_s)
    yield
    await catalog.aclose()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware, cors.preflight_middleware], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[LINKS] = OutputLinks.from_settings(settings)  # no I/O: presigning is local work
    app.cleanup_ctx.extend(
        [
            resources.database(migrate=True, stateless=True),  # the API also migrates at start
            resources.skytells,
            _catalog,
            # Storage serves uploads and deletions only: the API answers everything else without it, so it is no
            # readiness probe.
            resources.storage,
            _auth,
            # RabbitMQ carries live updates only: the API answers without it (streams then fall back on re-reading).
            resources.broker_link,
            resources.update_publisher,
            live_updates,
        ]
    )
    app.on_response_prepare.append(cors.add_cors_headers)
    add_probes(app, {"database": resources.database_probe(app)})
    app.router.add_post("/api/generate", views.generate, expect_handler=expect_handler)
    app.router.add_get("/api/predictions/{id}", views.get_prediction, expect_handler=expect_handler)
    app.router.add_delete("/api/predictions/{id}", views.delete_prediction, expect_handler=expect_handler)
    app.router.add_get("/api/predictions/{id}/events", streams.generation_events, expect_handler=expect_handler)
    app.router.add_post("/api/predictions/{id}/cancel", views.cancel_prediction, expect_handler=expect_handler)
    app.router.add_get("/api/predictions/{id}/deliveries", webhooks.list_deliveries, expect_handler=expect_handler)
    app.router.add_post(
        "/api/predictions/{id}/deliveries/{deliveryId}/redeliver", webhooks.redeliver, expect_handler=expect_handler
    )
    app.router.add_get("/api/webhooks/secret", webhooks.webhook_secret, expect_handler=expect_handler)
    app.router.add_post("/api/webhooks/secret/rotate", webhooks.rotate_webhook_secret, expect_handler=expect_handler)
    app.router.add_get("/api/generations", views.list_generations, expect_handler=expect_handler)
    app.router.add_get("/api/generations/events", streams.user_events, expect_handler=expect_handler)
    app.router.add_get("/api/me", views.me, expect_handler=expect_handler)
    app.router.add_get("/api/models", views.list_models, expect_handler=expect_handler)
    app.router.add_post("/api/uploads", views.upload, expect_handler=expect_handler)
    app.router.add_get("/api/openapi.json", views.openapi_document, expect_handler=expect_handler)
    add_page(app, settings, app[LINKS].origin)
    add_fallback(app)
    return app


def main() -> None:
    settings = boot("api", API_REQUIRED)
    run(create_app(settings), settings.bind_host, settings.api_port, use_uvloop=settings.uvloop)
