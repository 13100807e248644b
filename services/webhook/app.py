"""The webhook gateway process. It holds no state and touches no database: scale it freely."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from common.broker import retry_delays
from common.errors import BrokerUnavailable
from common.settings import WEBHOOK_REQUIRED, Settings
from common.web import add_probes, boot, error_middleware, run
from services.webhook import views
from services.webhook.keys import BROKER, SETTINGS
from services.webhook.publisher import BrokerLink


async def _broker(app: web.Application) -> AsyncIterator[None]:
    # Start-up does not wait for RabbitMQ (see publisher.py). Clean-up runs only after aiohttp has stopped
    # listening and let in-flight callbacks finish, so closing the channel here never cuts a publish short.
    settings = app[SETTINGS]
    delays = retry_delays(settings.retry_base_s, settings.retry_max_s, settings.persister_max_attempts)
    link = app[BROKER] = BrokerLink(settings.amqp_url, delays)
    link.start()
    yield
    await link.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=views.MAX_BODY)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_broker)

    async def broker_ready() -> None:
        link = app[BROKER]
        if link.broker is None or not link.ready:
            raise BrokerUnavailable("not connected to RabbitMQ")
        # Connected is not enough: under a memory or disk alarm every callback would wait 5 s for its 503.
        await link.broker.check_unblocked()

    add_probes(app, {"broker": broker_ready})
    app.router.add_post("/api/webhooks", views.receive)
    return app


def main() -> None:
    settings = boot("webhook", WEBHOOK_REQUIRED)
    run(create_app(settings), settings.webhook_port)
