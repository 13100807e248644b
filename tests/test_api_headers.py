"""Header values as the bytes a client sent: a malformed Authorization is a 401, a malformed Idempotency-Key a 400,
an unusable X-Request-Id is replaced, and nothing a client sends reaches PostgreSQL in a form its text type refuses.

These requests go over raw sockets (tests/wire.py): HTTP clients refuse to send bytes outside UTF-8 in a header.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from common.errors import ApiError
from common.web import read_header
from devstack.tokens import issue_token
from tests.helpers import JWT_SECRET, ServiceLog
from tests.wire import exchange, request

ENDPOINTS = [
    (b"POST", b"/api/generate"),
    (b"GET", f"/api/predictions/{uuid.uuid4()}".encode()),
    (b"POST", f"/api/predictions/{uuid.uuid4()}/cancel".encode()),
    (b"GET", b"/api/generations"),
]
BODY = json.dumps({"prompt": "a lighthouse"}).encode()
JSON = (b"Content-Type", b"application/json")
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def _port(urls) -> int:
    return int(urls.api.rsplit(":", 1)[1])


def _bearer(user_id: str) -> bytes:
    return b"Bearer " + issue_token(JWT_SECRET, user_id).encode()


BAD_AUTHORIZATION = {
    "bytes outside UTF-8 (the PyJWT UnicodeEncodeError)": b"Bearer \xff.\xff.\xff",
    "UTF-8 outside ASCII": "Bearer é.é.é".encode(),
    "a valid token with a stray byte": None,  # built per test: needs a real token
    "scheme of bytes outside UTF-8": b"\xff\xfe eyJ.eyJ.sig",
    "obs-text only": b"\x80\x81\x82",
}


async def test_authorization_with_bytes_outside_printable_ascii_is_a_401(services, urls):
    log = ServiceLog(services, "api")
    cases = {**BAD_AUTHORIZATION, "a valid token with a stray byte": _bearer("alice") + b"\xff"}
    for case, value in cases.items():
        for method, path in ENDPOINTS:
            [answer] = await exchange(_port(urls), request(method, path, [(b"Authorization", value), JSON], BODY))
            assert answer.status == 401, (case, path, answer.body)
            assert set(answer.json()) == {"error"}, case
            assert answer.headers["www-authenticate"] == "Bearer", case
    assert log.tracebacks() == []


@pytest.mark.parametrize(
    "claims",
    [{"sub": "nul\x00byte"}, {"sub": "lone \ud800 surrogate"}],
    ids=["NUL", "lone surrogate"],
)
async def test_a_signed_token_whose_sub_postgresql_cannot_store_is_a_401(services, urls, claims):
    token = jwt.encode({**claims, "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256").encode()
    log = ServiceLog(services, "api")
    for method, path in ENDPOINTS:
        [answer] = await exchange(
            _port(urls), request(method, path, [(b"Authorization", b"Bearer " + token), JSON], BODY)
        )
        assert answer.status == 401, (path, answer.body)
    assert log.tracebacks() == []


@pytest.mark.parametrize(
    "sent",
    [b"\xff\xfe-not-utf8", "caf\u00e9".encode(), b"x" * 129, b"tab\there"],
    ids=["outside UTF-8", "UTF-8 outside ASCII", "129 characters", "a tab inside"],
)
async def test_an_unusable_request_id_is_replaced_not_echoed_logged_or_stored(services, urls, db, user_id, sent):
    log = ServiceLog(services, "api")
    headers = [(b"Authorization", _bearer(user_id)), (b"X-Request-Id", sent), JSON]
    [answer] = await exchange(_port(urls), request(b"POST", b"/api/generate", headers, BODY))

    assert answer.status == 201, answer.body  # bad input there is not the client's request failing
    given = answer.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(given), given
    stored = await db.fetchval("SELECT request_id FROM generations WHERE id = $1::uuid", answer.json()["id"])
    assert stored == given
    logged = [json.loads(line).get("request_id") for line in log.lines()]
    assert given in logged and all(r is None or (r.isascii() and r.isprintable()) for r in logged)
    assert log.tracebacks() == []


async def test_a_sane_request_id_is_kept(services, urls):
    sent = "req-" + "7" * 124  # 128 printable characters, the longest kept
    [answer] = await exchange(_port(urls), request(b"GET", b"/healthz", [(b"X-Request-Id", sent.encode())]))
    assert answer.status == 200 and answer.headers["x-request-id"] == sent


@pytest.mark.parametrize("key", [b"\xff", "cl\u00e9".encode(), b"a" * 201], ids=["outside UTF-8", "UTF-8", "201 long"])
async def test_a_malformed_idempotency_key_is_a_400(services, urls, user_id, key):
    headers = [(b"Authorization", _bearer(user_id)), (b"Idempotency-Key", key), JSON]
    [answer] = await exchange(_port(urls), request(b"POST", b"/api/generate", headers, BODY))
    assert answer.status == 400 and "Idempotency-Key" in answer.json()["error"]


async def test_a_repeated_idempotency_key_is_a_400(services, urls, user_id):
    headers = [(b"Authorization", _bearer(user_id)), (b"Idempotency-Key", b"one"), (b"Idempotency-Key", b"two"), JSON]
    [answer] = await exchange(_port(urls), request(b"POST", b"/api/generate", headers, BODY))
    assert answer.status == 400 and "more than once" in answer.json()["error"]


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """An app answering with `read_header` of the header named in the path, through aiohttp's real parser: what
    the endpoints reading Prefer and Last-Event-ID get."""

    async def echo(request_: web.Request) -> web.Response:
        try:
            value = read_header(
                request_, request_.match_info["name"], max_length=64, repeatable="many" in request_.query
            )
        except ApiError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        return web.json_response({"value": value})

    app = web.Application()
    app.router.add_get("/{name}", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server.port
    await server.close()


async def _read(port: int, name: str, *values: bytes, query: bytes = b"") -> tuple[int, object]:
    [answer] = await exchange(port, request(b"GET", b"/" + name.encode() + query, [(name.encode(), v) for v in values]))
    body = answer.json()
    return answer.status, body.get("value", body.get("error"))


@pytest.mark.parametrize("name", ["Prefer", "Last-Event-ID"])
async def test_read_header_checks_the_bytes_of_prefer_and_last_event_id(echo_port, name):
    assert await _read(echo_port, name) == (200, None)
    assert await _read(echo_port, name, b"wait=5") == (200, "wait=5")
    for bad in (b"\xff", b"wait=\xc3\xa9", b"x" * 65, b"\x80abc"):
        status, message = await _read(echo_port, name, bad)
        assert status == 400 and name in str(message), bad


async def test_read_header_joins_a_repeatable_header_and_checks_every_copy(echo_port):
    both = (b"wait=5", b"respond-async")
    assert await _read(echo_port, "Prefer", *both, query=b"?many") == (200, "wait=5, respond-async")
    assert (await _read(echo_port, "Prefer", b"wait=5", b"\xff", query=b"?many"))[0] == 400
    assert (await _read(echo_port, "Prefer", *both))[0] == 400  # not repeatable: two copies are ambiguous


@pytest.mark.parametrize("path", [b"/api/generate", b"/no/such/path"], ids=["a route", "no route"])
async def test_an_expect_header_of_any_bytes_is_a_json_417_and_100_continue_works(services, urls, user_id, path):
    log = ServiceLog(services, "api")
    for expect in (b"\xff\xfe", b"something-else"):
        [answer] = await exchange(_port(urls), request(b"POST", path, [(b"Expect", expect), JSON], BODY))
        assert answer.status == 417 and set(answer.json()) == {"error"}, answer.body
    headers = [(b"Authorization", _bearer(user_id)), (b"Expect", b"100-continue"), JSON]
    [answer] = await exchange(_port(urls), request(b"POST", path, headers, BODY))
    assert answer.status == (201 if path == b"/api/generate" else 404), answer.body
    assert log.tracebacks() == []


@pytest.mark.parametrize("service", ["api", "webhook"])
async def test_a_body_that_cannot_be_decoded_as_declared_is_a_400(services, urls, user_id, service):
    log = ServiceLog(services, service)
    port = int(services.env["API_PORT" if service == "api" else "WEBHOOK_PORT"])
    path = b"/api/generate" if service == "api" else b"/api/webhooks"
    auth = [(b"Authorization", _bearer(user_id))]
    broken = [
        request(b"POST", path, [*auth, JSON, (b"Transfer-Encoding", b"chunked")], b"5\r\n{}\r\nzz\r\n", length=False),
    ]
    if service == "api":  # (the gateway refuses any Content-Encoding before reading: tests/test_webhook_encoding.py)
        broken.append(request(b"POST", path, [*auth, JSON, (b"Content-Encoding", b"gzip")], BODY))
    for wire in broken:
        [answer] = await exchange(port, wire)
        assert answer.status == 400, answer.body
    assert log.tracebacks() == []
