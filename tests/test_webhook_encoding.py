"""A callback's signature covers the bytes as sent, so the gateway refuses any Content-Encoding but identity (415).

Why refusing is needed at all: aiohttp decompresses a request body whose Content-Encoding it knows before
`request.read()` returns it, so a check over what `read()` gives would be a check over other bytes than those
signed. The first test shows that of the installed aiohttp; the others hold the gateway to the refusal.
"""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from common.signing import SIGNATURE_HEADER, sign
from tests.helpers import WEBHOOK_SECRET, ServiceLog
from tests.wire import exchange, request


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(request_: web.Request) -> web.Response:
        return web.Response(body=await request_.read())

    app = web.Application()
    app.router.add_post("/", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server.port
    await server.close()


async def test_aiohttp_read_returns_a_gzip_body_decompressed(echo_port):
    plain = b'{"id": "pred_1", "status": "succeeded"}'
    sent = gzip.compress(plain)
    headers = [(b"Content-Encoding", b"gzip")]
    [answer] = await exchange(echo_port, request(b"POST", b"/", headers, sent))
    assert answer.status == 200 and answer.body == plain != sent


def _callback() -> bytes:
    return json.dumps({"id": f"pred_{uuid.uuid4().hex[:16]}", "status": "succeeded", "output": []}).encode()


def _port(urls) -> int:
    return int(urls.webhook.rsplit(":", 1)[1])


ENCODINGS = {
    "gzip": gzip.compress,
    "GZIP": gzip.compress,
    "deflate": zlib.compress,
    "br": lambda body: body,  # refused before anything tries to decode it
    "identity, gzip": gzip.compress,
    "x-unknown": lambda body: body,
}


@pytest.mark.parametrize("coding", ENCODINGS, ids=list(ENCODINGS))
@pytest.mark.parametrize("signed_over", ["decoded", "as sent"])
async def test_an_encoded_callback_is_415_whatever_its_signature_covers(services, urls, coding, signed_over):
    log = ServiceLog(services, "webhook")
    plain = _callback()
    sent = ENCODINGS[coding](plain)
    signature = sign(plain if signed_over == "decoded" else sent, WEBHOOK_SECRET)
    headers = [(SIGNATURE_HEADER.encode(), signature.encode()), (b"Content-Encoding", coding.encode())]
    [answer] = await exchange(_port(urls), request(b"POST", b"/api/webhooks", headers, sent))

    assert answer.status == 415, answer.body
    assert set(answer.json()) == {"error"}
    assert log.tracebacks() == []


async def test_a_repeated_content_encoding_is_checked_in_every_copy(services, urls):
    plain = _callback()
    sent = gzip.compress(plain)
    headers = [
        (SIGNATURE_HEADER.encode(), sign(plain, WEBHOOK_SECRET).encode()),
        (b"Content-Encoding", b"identity"),
        (b"Content-Encoding", b"gzip"),
    ]
    [answer] = await exchange(_port(urls), request(b"POST", b"/api/webhooks", headers, sent))
    assert answer.status == 415, answer.body


async def test_identity_is_the_bytes_as_sent_and_accepted(services, urls):
    body = _callback()
    headers = [(SIGNATURE_HEADER.encode(), sign(body, WEBHOOK_SECRET).encode()), (b"Content-Encoding", b"identity")]
    [answer] = await exchange(_port(urls), request(b"POST", b"/api/webhooks", headers, body))
    assert answer.status == 200 and answer.json() == {"ok": True}
