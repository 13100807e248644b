"""What `POST /api/generate` accepts: 400s naming the field for every wrong body, 413 over 64 KiB without
reading the rest, and never a 500 for strings PostgreSQL could not store."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import pytest

from services.api.bodies import MAX_BODY

WRONG_BODIES = [
    (b"not json", "Body must be a JSON object"),
    (b"", "Body must be a JSON object"),
    (b"[]", "Body must be a JSON object"),
    (b'"a cat"', "Body must be a JSON object"),
    (b"42", "Body must be a JSON object"),
    (b"null", "Body must be a JSON object"),
    (b"\xff\xfe\x00garbage", "Body must be a JSON object"),
    (b"[" * 30000 + b"]" * 30000, "Body must be a JSON object"),  # deeper than the JSON parser recurses
    (b"{}", "Invalid prompt"),
    (b'{"prompt": 7}', "Invalid prompt"),
    (b'{"prompt": null}', "Invalid prompt"),
    (b'{"prompt": ["a"]}', "Invalid prompt"),
    (b'{"prompt": ""}', "Invalid prompt"),
    (b'{"prompt": "   \\n\\t "}', "Invalid prompt"),
    (json.dumps({"prompt": "x" * 501}).encode(), "Invalid prompt"),
    (b'{"prompt": "nul \\u0000 inside"}', "Invalid prompt"),  # PostgreSQL text cannot hold NUL
    (b'{"prompt": "lone \\ud800 surrogate"}', "Invalid prompt"),  # not encodable as UTF-8
    (b'{"prompt": "a cat", "model": "dall-e"}', "Invalid model"),
    (b'{"prompt": "a cat", "model": 3}', "Invalid model"),
    (b'{"prompt": "a cat", "model": null}', "Invalid model"),
    (b'{"prompt": "a cat", "userId": 12}', "Invalid userId"),
    (b'{"prompt": "a cat", "userId": null}', "Invalid userId"),
]


@pytest.mark.parametrize("raw,message", WRONG_BODIES, ids=[m + ":" + r[:20].decode("latin-1") for r, m in WRONG_BODIES])
async def test_wrong_bodies_are_400_naming_the_field(http, urls, auth, raw, message):
    response = await http.post(
        f"{urls.api}/api/generate", content=raw, headers={**auth, "Content-Type": "application/json"}
    )

    assert response.status_code == 400, response.text
    assert response.json() == {"error": message}


async def test_prompt_is_trimmed_and_500_characters_after_trimming_are_accepted(http, urls, auth):
    prompt = "y" * 500
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": f"  {prompt}\n"}, headers=auth)

    assert response.status_code == 201, response.text
    assert response.json()["prompt"] == prompt
    assert response.json()["model"] == "truefusion-pro"


async def _raw_exchange(api: str, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a request over a bare socket without finishing its body; return what the server answers."""
    parts = urlsplit(api)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head)
        for part in body_parts:
            writer.write(part)
        await writer.drain()
        # The body is never completed: a server that insisted on reading it all would never answer.
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
    finally:
        writer.close()


def _head(auth: dict[str, str], length_header: str) -> bytes:
    return (
        "POST /api/generate HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth['Authorization']}\r\n{length_header}\r\n\r\n"
    ).encode()


async def test_declared_length_over_64k_is_413_before_the_body_is_sent(urls, auth):
    head = await _raw_exchange(urls.api, _head(auth, "Content-Length: 104857600"), [b'{"prompt": "'])

    assert head.startswith(b"HTTP/1.1 413"), head


async def test_chunked_body_over_64k_is_cut_off_with_413(urls, auth):
    chunk = b"a" * 16384
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (MAX_BODY // len(chunk) + 2)  # 96 KiB, never terminated

    head = await _raw_exchange(urls.api, _head(auth, "Transfer-Encoding: chunked"), chunks)

    assert head.startswith(b"HTTP/1.1 413"), head


async def test_body_just_under_the_limit_is_read(http, urls, auth):
    padding = "p" * (MAX_BODY - 100)
    response = await http.post(
        f"{urls.api}/api/generate", json={"prompt": "a small cat", "padding": padding}, headers=auth
    )

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("method", "path", "allowed"), [("GET", "/api/generate", "POST"), ("DELETE", "/api/generations", "GET")]
)
async def test_wrong_method_is_405_saying_which_are_allowed(http, urls, auth, method, path, allowed):
    response = await http.request(method, urls.api + path, headers=auth)
    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed"}
    assert allowed in {m.strip() for m in response.headers["Allow"].split(",")}
