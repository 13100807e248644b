"""Cross-origin calls from the browser origins listed in `CORS_ALLOWED_ORIGINS` (exact matches only).

Preflights (`OPTIONS` with `Access-Control-Request-Method`) on any `/api/*` path are answered here; every other
`/api/*` response to an allowed origin gets its headers just before it is sent (`on_response_prepare`), so
errors and event streams carry them too. Any other origin gets no CORS header at all: the browser then keeps
the answer from the page.
"""

from __future__ import annotations

from aiohttp import web

from common.keys import SETTINGS
from common.web import REQUEST_ID_HEADER, Handler

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, Prefer, Last-Event-ID"
EXPOSED_HEADERS = f"Location, {REQUEST_ID_HEADER}"
PREFLIGHT_MAX_AGE_S = "600"


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None or not request.path.startswith("/api/"):
        return None
    return origin if origin in request.app[SETTINGS].cors_allowed_origins else None


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return await handler(request)
    if not request.path.startswith("/api/"):
        return await handler(request)
    origin = _allowed_origin(request)
    if origin is None:
        return web.json_response({"error": "Origin not allowed"}, status=403)
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE_S,
        },
    )


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the allow-origin headers on every `/api/*` answer to an allowed origin."""
    if "Origin" in request.headers and request.path.startswith("/api/"):
        response.headers.add("Vary", "Origin")  # caches must not serve one origin's answer to another
    origin = _allowed_origin(request)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
