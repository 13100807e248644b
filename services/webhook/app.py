"""The webhook gateway process. It holds no state and touches no database: scale it freely."""

from __future__ import annotations

from aiohttp import web

from common import resources
from common.keys import SETTINGS
from common.probes import add_probes
from common.process import boot, run
from common.settings import WEBHOOK_REQUIRED, Settings
from common.web import add_fallback, error_middleware, expect_handler
from services.webhook import views


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=views.MAX_BODY)
    app[SETTINGS] = settings
    # Start-up does not wait for RabbitMQ: until it answers, `/readyz` and every callback say 503 (Skytells
    # retries), rather than a crash loop that answers nothing.
    app.cleanup_ctx.append(resources.broker_link)
    add_probes(app, {"broker": resources.broker_probe(app)})
    app.router.add_post("/api/webhooks", views.receive, expect_handler=expect_handler)
    add_fallback(app)
    return app


def main() -> None:
    settings = boot("webhook", WEBHOOK_REQUIRED)
    # Bodies are never decompressed by aiohttp: the signature covers the bytes as sent, and an encoded callback is
    # refused (415) by the view, not by the parser with a plain-text 400 when it lacks the codec.
    run(
        create_app(settings),
        settings.bind_host,
        settings.webhook_port,
        auto_decompress=False,
        use_uvloop=settings.uvloop,
    )
