"""How the API answers with JSON: `web.json_response`'s shape, encoded by `dumps`."""

from __future__ import annotations

from aiohttp import web

from common.representation import dumps

JSON = "application/json"


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """`web.json_response` encoded by `dumps` (orjson: compact, non-ASCII text as UTF-8, the stdlib for what
    orjson refuses); the same Content-Type."""
    return web.Response(body=dumps(body), status=status, headers=headers, content_type=JSON, charset="utf-8")
