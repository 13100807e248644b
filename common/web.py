"""What every aiohttp service answers with: JSON errors (the error middleware, the fallback route, `Expect`),
request ids, and the checked reading of header values. The probes are `common/probes.py`, the access line and
HTTP metrics `common/access_log.py`, the process's start `common/process.py`."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import HttpVersion11, hdrs, web

from common import log as logs
from common.access_log import LOG_IDS, observe
from common.db.pool import unavailable as database_unavailable
from common.errors import (
    ApiError,
    BrokerUnavailable,
    JwksUnavailable,
    SkytellsError,
    SkytellsInputRejected,
    SkytellsRateLimited,
    SkytellsTimeout,
    SkytellsUnreachable,
    StudioError,
)

logger = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
MAX_REQUEST_ID = 128


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


def domain_answer(exc: StudioError) -> web.Response | None:
    """The one place a domain error (common/errors.py) becomes an HTTP answer, wherever it was raised."""
    if isinstance(exc, ApiError):
        return json_error(exc.status, exc.message, exc.headers)
    if isinstance(exc, SkytellsError):
        # Skytells' verdict on the input is the client's 400; asked to wait, or no answer at all, our 503 with
        # its Retry-After; any other refusal or unreadable answer a 502 with its message.
        if isinstance(exc, SkytellsInputRejected):
            return json_error(400, exc.message)
        if isinstance(exc, SkytellsRateLimited | SkytellsUnreachable | SkytellsTimeout):
            return json_error(503, exc.message, {"Retry-After": exc.retry_after_header})
        return json_error(502, exc.message)
    if isinstance(exc, JwksUnavailable):
        return json_error(503, "Cannot check the token right now; retry later", {"Retry-After": "5"})
    if isinstance(exc, BrokerUnavailable):
        return json_error(503, "Event broker unavailable, retry later", {"Retry-After": "5"})
    return None  # a domain error no handler should have let through: unexpected


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
        except StudioError as exc:
            answer = domain_answer(exc)
            if answer is None:
                logger.exception("unhandled error", extra={"route": route, "method": request.method})
                answer = json_error(500, "Internal server error")
            response = answer
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
    observe(route, request.method, response.status, time.perf_counter() - started)
    return response


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
