"""What every aiohttp service shares: JSON errors, request ids, header values, an access log, /healthz,
/readyz, /metrics."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from common import log as logs
from common.db.pool import unavailable as database_unavailable
from common.settings import Settings, SettingsError

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("studio.access")

Check = Callable[[], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
# The ids a request's handling learned (its request id, and what handlers `annotate`), for its access line.
LOG_IDS: web.RequestKey[Mapping[str, Any]] = web.RequestKey("log_ids")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
MAX_REQUEST_ID = 128

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


def printable_ascii(value: str) -> bool:
    """True when every byte the client sent for this value was printable ASCII (0x20-0x7e).

    aiohttp decodes header bytes as UTF-8 with `surrogateescape`: bytes outside UTF-8 arrive as lone surrogates,
    which no encoder (PyJWT's, asyncpg's) accepts, and control bytes would forge log lines. Both fail here.
    """
    return value.isascii() and value.isprintable()


def read_header(
    request: web.Request,
    name: str,
    *,
    max_length: int,
    repeatable: bool = False,
    status: int = 400,
    headers: Mapping[str, str] | None = None,
) -> str | None:
    """A header's value, None when absent; ApiError `status` when it is not 1 to `max_length` printable ASCII
    characters, or is repeated and not `repeatable`. Repeatable fields (Prefer) are joined with ", " as
    RFC 9110 section 5.3 combines them, and the whole is checked, so no copy escapes the check."""
    values = request.headers.getall(name, ())
    if not values:
        return None
    if len(values) > 1 and not repeatable:
        raise ApiError(status, f"Invalid {name} header: sent more than once", headers)
    value = ", ".join(values)
    if not 1 <= len(value) <= max_length or not printable_ascii(value):
        raise ApiError(status, f"Invalid {name} header: 1 to {max_length} printable ASCII characters", headers)
    return value


def _request_id(request: web.Request) -> str:
    """The client's X-Request-Id when it is a sane id; otherwise a new one. It is echoed, logged and stored, so
    nothing else a client sends there goes anywhere."""
    sent = request.headers.get(REQUEST_ID_HEADER)
    if sent is not None and 1 <= len(sent) <= MAX_REQUEST_ID and printable_ascii(sent):
        return sent
    return secrets.token_hex(16)  # 128 random bits, as a uuid4's hex without building the UUID


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` is honoured; any other expectation is a 417 in JSON. (aiohttp's default answer runs
    before any middleware and echoes the value: for bytes outside UTF-8 it fails with a plain-text 500.)"""
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue" and request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own does: the interim answer is not the response
        return None
    return json_error(417, "Unsupported Expect header: only 100-continue is")


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


UNROUTED = "/{unrouted:.*}"
_UNROUTED_CANONICAL = "/{unrouted}"  # how aiohttp names that resource


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None and resource.canonical != _UNROUTED_CANONICAL else "unmatched"


DATABASE_RETRY_AFTER = "2"  # seconds: a restart of PostgreSQL takes about that long
# Headers of aiohttp's own errors that tell the client what to do next (405's Allow is required by RFC 9110).
_KEPT_HEADERS = ("Allow", "Retry-After")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes JSON; anything unexpected is logged once and answered with a generic 500."""
    request_id = _request_id(request)
    request[REQUEST_ID] = request_id
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
        except web.RequestPayloadError as exc:
            # aiohttp could not decode the body as declared (broken chunks, a body not in its Content-Encoding).
            logger.info("refused a malformed body: %s", str(exc).strip().splitlines()[-1:], extra={"route": route})
            response = json_error(400, "Malformed request body")
        except Exception as exc:
            if isinstance(exc, ConnectionResetError) and _client_gone(request):
                # Its client left mid-request (a truncated body): nobody waits for the answer, and no fault of ours.
                logger.info("client went away before its request was read", extra={"route": route})
                response = json_error(400, "Request incomplete")
            elif database_unavailable(exc):
                logger.warning("database unavailable: %r", exc, extra={"route": route, "method": request.method})
                response = json_error(503, "Database unavailable, retry shortly", {"Retry-After": DATABASE_RETRY_AFTER})
            else:
                logger.exception("unhandled error", extra={"route": route, "method": request.method})
                response = json_error(500, "Internal server error")
        finally:
            request[LOG_IDS] = logs.current()
    response.headers[REQUEST_ID_HEADER] = request_id
    _observe(route, request.method, response.status, time.perf_counter() - started)
    return response


_NO_IDS: Mapping[str, Any] = {}


class AccessLog(AbstractAccessLogger):
    """One line per answered request, refused ones included: aiohttp calls it for every response, those to
    requests it could not even parse too (no handler ran for them, so they have no request id). It carries the
    ids the request's handling learned, so a line about one generation names it as every other line does.

    The line is cheap on a hot path: written straight to the log's handler, without a `logging` record, and not
    at all (nor any timing) when the level filters it out, since aiohttp asks `enabled` once per connection."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._write = logs.line_writer(logger.name)  # per connection: aiohttp builds one for each

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        method, path, status = request.method, request.path, response.status
        fields = {
            **request.get(LOG_IDS, _NO_IDS),
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round(time * 1000, 2),
        }
        if self._write is not None:
            self._write(f"{method} {path} {status}", fields)
        else:
            self.logger.info("%s %s %d", method, path, status, extra=fields)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


_SERIES: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def _observe(route: str, method: str, status: int, seconds: float) -> None:
    # `labels()` takes a lock and builds a key on every call: look each series up once, then keep it.
    series = _SERIES.get((route, method, status))
    if series is None:
        series = HTTP_REQUESTS.labels(route, method, str(status)), HTTP_LATENCY.labels(route, method)
        _SERIES[route, method, status] = series
    series[0].inc()
    series[1].observe(seconds)


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

    app.router.add_get("/healthz", healthz, expect_handler=expect_handler)
    app.router.add_get("/readyz", readyz, expect_handler=expect_handler)
    app.router.add_get("/metrics", metrics, expect_handler=expect_handler)


def add_fallback(app: web.Application) -> None:
    """The 404/405 of every path no route takes: every request reaches a route of ours, so aiohttp's own
    route-level code never answers a stranger (its handling of `Expect` runs before any middleware). Call it
    after every other route: for paths of the same prefix (`/` and this), aiohttp tries routes in the order they
    were added."""

    async def unrouted(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not request.match_info.route.resource:
                allowed |= (await resource.resolve(request))[1]
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
        raise web.HTTPNotFound()

    app.router.add_route("*", UNROUTED, unrouted, expect_handler=expect_handler)


def event_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when asked for and installed, else asyncio's own."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # optional: a platform without it runs on asyncio's loop
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(app: web.Application, host: str, port: int, *, use_uvloop: bool, **kwargs: Any) -> None:
    """`web.run_app` owns the lifecycle: SIGTERM stops accepting and lets in-flight requests finish."""
    # What was imported and built so far lives as long as the process: out of the collector's sight, an old-
    # generation collection does not walk it again while a request waits (a pause in the latency tail).
    gc.freeze()
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        shutdown_timeout=30,
        access_log_class=AccessLog,
        access_log=access_logger,
        loop=event_loop(use_uvloop),
        **kwargs,
    )


def boot(service: str, required: Sequence[str]) -> Settings:
    """A service's settings from the environment, and JSON logging; exits naming every bad variable."""
    try:
        settings = Settings.from_env(os.environ, required=required)
    except SettingsError as exc:
        sys.exit(str(exc))
    logs.configure(service, settings.log_level)
    return settings
