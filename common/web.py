"""What every aiohttp service shares: JSON errors, request ids, /healthz, /readyz, /metrics."""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from common import log as logs
from common.db.pool import UNAVAILABLE as DATABASE_UNAVAILABLE
from common.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"

HTTP_REQUESTS = Counter(
    "studio_http_requests_total", "HTTP requests answered, by route and status", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "studio_http_request_duration_seconds",
    "HTTP request latency, by route",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class ApiError(Exception):
    """An error answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


DATABASE_RETRY_AFTER = "2"  # seconds: a restart of PostgreSQL takes about that long
# Headers of aiohttp's own errors that tell the client what to do next (405's Allow is required by RFC 9110).
_KEPT_HEADERS = ("Allow", "Retry-After")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes JSON; anything unexpected is logged once and answered with a generic 500."""
    request_id = request.headers.get(REQUEST_ID_HEADER, "")[:100] or uuid.uuid4().hex
    request["request_id"] = request_id
    started = time.perf_counter()
    route = _route_name(request)
    response: web.StreamResponse
    with logs.bind(request_id=request_id):
        try:
            response = await handler(request)
        except ApiError as exc:
            response = json_error(exc.status, exc.message, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.reason if exc.status != 413 else "Request body too large"
            kept = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
            response = json_error(exc.status, message, kept)
        except DATABASE_UNAVAILABLE as exc:
            logger.warning("database unavailable: %r", exc, extra={"route": route, "method": request.method})
            response = json_error(503, "Database unavailable, retry shortly", {"Retry-After": DATABASE_RETRY_AFTER})
        except Exception:
            logger.exception("unhandled error", extra={"route": route, "method": request.method})
            response = json_error(500, "Internal server error")
    response.headers[REQUEST_ID_HEADER] = request_id
    HTTP_REQUESTS.labels(route, request.method, str(response.status)).inc()
    HTTP_LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
    return response


def add_probes(app: web.Application, checks: Mapping[str, Check]) -> None:
    """`/healthz` (the process runs), `/readyz` (each named dependency answers), `/metrics`."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        failing: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await check()
            except Exception as exc:  # a readiness probe reports, it does not raise
                failing[name] = str(exc) or exc.__class__.__name__
        if failing:
            names = ", ".join(sorted(failing))
            return web.json_response(
                {"status": "unavailable", "error": f"not ready: {names}", "failing": failing}, status=503
            )
        return web.json_response({"status": "ready"})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


def run(app: web.Application, port: int, **kwargs: Any) -> None:
    """`web.run_app` owns the lifecycle: SIGTERM stops accepting and lets in-flight requests finish."""
    web.run_app(app, host="0.0.0.0", port=port, print=None, shutdown_timeout=30, **kwargs)  # noqa: S104


def boot(service: str, required: Sequence[str]) -> Settings:
    """A service's settings from the environment, and JSON logging; exits naming every bad variable."""
    try:
        settings = Settings.from_env(os.environ, required=required)
    except SettingsError as exc:
        sys.exit(str(exc))
    logs.configure(service, settings.log_level)
    return settings
