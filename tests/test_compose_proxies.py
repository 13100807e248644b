"""The proxies of docker-compose.yml (api-proxy, webhook-proxy) run by a real Caddy with the repository's
Caddyfile, in front of a stand-in that answers 200 to every path: whatever the proxy forwards shows, so a 404
for /metrics or /readyz is the proxy's own, however the path is spelt."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from devstack import apt
from devstack.processes import ManagedProcess, free_port, port_open, wait_until
from tests.helpers import listening
from tests.wire import exchange, request

ROOT = Path(__file__).resolve().parent.parent
CADDYFILE = ROOT / "deploy" / "compose" / "Caddyfile"

# Spellings a client might try, each of which Caddy or aiohttp resolves to the service's /metrics or /readyz.
INTERNAL = (
    b"/metrics",
    b"/readyz",
    b"/metrics/",
    b"/readyz?probe=1",
    b"//metrics",
    b"/METRICS",
    b"/Readyz",
    b"/%6detrics",
    b"/%2Fmetrics",
    b"/./readyz",
    b"/api/../metrics",
    b"/static/%2e%2e/readyz",
)
# What clients and Skytells call, and the proxies' own healthcheck.
FORWARDED = (b"/", b"/static/app.js", b"/api/generate", b"/api/webhooks", b"/healthz", b"/metrics-of-mine")


@pytest.fixture(scope="module")
def upstream_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxy(upstream_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Caddy running the Caddyfile as compose's proxies do, in front of `upstream_port`; its port."""
    binary = Path("/usr/bin/caddy")
    apt.ensure_installed("caddy", binary, recommends=False)
    home = tmp_path_factory.mktemp("caddy")
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "PROXY_PORT": str(port),
        "PROXY_UPSTREAM_HOST": "localhost",
        "PROXY_UPSTREAM_PORT": str(upstream_port),
    }
    argv = [str(binary), "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    caddy = ManagedProcess("caddy", argv, env=env, log_path=home / "caddy.log", cwd=home).start()
    try:
        wait_until("caddy", lambda: port_open("127.0.0.1", port), 30, caddy)
        yield port
    finally:
        caddy.stop()


@pytest.fixture
async def seen(upstream_port: int) -> AsyncIterator[list[str]]:
    """The request targets the stand-in service received; it answers 200 to every one."""
    targets: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        targets.append(request.raw_path)
        return web.json_response({"target": request.raw_path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with listening(app, port=upstream_port):
        yield targets


async def test_metrics_and_readyz_are_not_found_through_the_proxy_however_spelt(proxy, seen):
    for target in INTERNAL:
        (answer,) = await exchange(proxy, request(b"GET", target))
        assert answer.status == 404, (target, answer.status, answer.body)
        assert answer.json() == {"error": "Not Found"}, target
        assert answer.headers["content-type"] == "application/json", target
    assert seen == []


async def test_the_clients_paths_pass_through_the_proxy(proxy, seen):
    for target in FORWARDED:
        (answer,) = await exchange(proxy, request(b"GET", target))
        assert answer.status == 200, (target, answer.status, answer.body)
        assert answer.json() == {"target": target.decode()}
    (answer,) = await exchange(proxy, request(b"POST", b"/api/webhooks", body=b"{}"))
    assert answer.status == 200
    assert seen == [target.decode() for target in FORWARDED] + ["/api/webhooks"]
