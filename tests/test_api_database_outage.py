"""While PostgreSQL cannot be reached the API answers 503 with Retry-After, never 500 (found by the fault soak)."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from aiohttp import web
from aiohttp.test_utils import TestServer

from chaos.balancer import Balancer
from common.web import error_middleware
from devstack.processes import free_port
from devstack.stack import Stack


async def test_api_answers_503_with_retry_after_while_the_database_is_down(stack: Stack, auth, http) -> None:
    # A second API process reaching PostgreSQL through a balancer, so only its database goes away.
    database = urlsplit(stack.settings.database_url)
    front = Balancer("postgres", free_port(), [database.port or 5432])
    await front.up()
    netloc = database.netloc.rsplit(":", 1)[0] + f":{front.port}"
    api_port = free_port()
    env = {"DATABASE_URL": urlunsplit(database._replace(netloc=netloc)), "API_PORT": str(api_port)}
    process = await asyncio.to_thread(stack.start_service, "api", env, f"api-dbdown-{api_port}")
    api = f"http://127.0.0.1:{api_port}"
    try:
        assert (await http.get(f"{api}/api/predictions/{uuid.uuid4()}", headers=auth)).status_code == 404
        await front.down()
        answers: list[httpx.Response] = [
            await http.get(f"{api}/api/predictions/{uuid.uuid4()}", headers=auth),
            await http.post(f"{api}/api/generate", json={"prompt": "while the database is down"}, headers=auth),
            await http.get(f"{api}/api/generations", headers=auth),
        ]
        for response in answers:
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "2"
            assert response.json() == {"error": "Database unavailable, retry shortly"}
        await front.up()
        assert (await http.get(f"{api}/api/predictions/{uuid.uuid4()}", headers=auth)).status_code == 404
    finally:
        await front.down()
        await asyncio.to_thread(process.stop)


async def _lost_mid_transaction(_: web.Request) -> web.Response:
    """What asyncpg raises when PostgreSQL goes away inside `conn.transaction()`: the query's error, then a
    plain InterfaceError from the transaction's exit, chained to it."""
    try:
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    except asyncpg.PostgresError:
        raise asyncpg.InterfaceError(
            "cannot call Transaction.__aexit__(): the underlying connection is closed"
        ) from None


async def _misused(_: web.Request) -> web.Response:
    raise asyncpg.InterfaceError("cannot perform operation: another operation is in progress")


# The middleware keeps the request id under a string key, which this aiohttp version warns about.
async def test_a_connection_lost_inside_a_transaction_is_503_and_a_real_bug_stays_500(http) -> None:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/lost", _lost_mid_transaction)
    app.router.add_get("/bug", _misused)
    async with TestServer(app, host="127.0.0.1") as server:
        lost = await http.get(str(server.make_url("/lost")))
        assert lost.status_code == 503 and lost.headers["Retry-After"] == "2", lost.text
        bug = await http.get(str(server.make_url("/bug")))
        assert bug.status_code == 500 and bug.json() == {"error": "Internal server error"}
