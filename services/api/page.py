"""Studio's web page: `GET /` and its one script and one stylesheet, served by the API itself.

The files live in `static/` beside this module (package data, so the image ships them) and are plain files: no
build step, nothing fetched from another host. The page runs under a Content-Security-Policy that allows no
inline script or style; images come from the public S3 base URL, so that one origin is allowed for images.
`GET /api/config` tells the page (and any client) what it may ask for before signing in.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from common.settings import Settings
from common.web import expect_handler
from services.api.bodies import MAX_PROMPT

STATIC = Path(__file__).parent / "static"
# Name in the URL -> file and type; only these are served, so no path from a request ever reaches the disk.
ASSETS = {
    "studio.js": "text/javascript; charset=utf-8",
    "studio.css": "text/css; charset=utf-8",
}
INDEX = "index.html"


def _origin(url: str) -> str:
    """`scheme://host[:port]` of a URL: what a CSP source needs to name the S3 server."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(public_base_url: str) -> str:
    images = " ".join(dict.fromkeys(("'self'", _origin(public_base_url))))
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {images}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def add_page(app: web.Application, settings: Settings) -> None:
    """Routes of the page and of `GET /api/config`; the headers are computed once, here."""
    headers = {
        "Content-Security-Policy": content_security_policy(settings.s3_public_base_url),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Revalidated on every load (the ETag makes that cheap), so a deploy shows at once.
        "Cache-Control": "no-cache",
    }
    config = {
        "models": list(settings.allowed_models),
        "defaultModel": settings.allowed_models[0],
        "maxPromptLength": MAX_PROMPT,
    }

    def serve(name: str, content_type: str) -> web.FileResponse:
        return web.FileResponse(STATIC / name, headers={**headers, "Content-Type": content_type})

    async def index(_: web.Request) -> web.FileResponse:
        return serve(INDEX, "text/html; charset=utf-8")

    async def asset(request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return serve(name, ASSETS[name])

    async def page_config(_: web.Request) -> web.Response:
        return web.json_response(config)

    app.router.add_get("/", index, expect_handler=expect_handler)
    app.router.add_get("/static/{name}", asset, expect_handler=expect_handler)
    app.router.add_get("/api/config", page_config, expect_handler=expect_handler)
