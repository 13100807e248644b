"""The probes every service serves: `/healthz` (the process runs), `/readyz` (each named dependency
answers), `/metrics` (Prometheus)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.web import expect_handler

Check = Callable[[], Awaitable[None]]


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
