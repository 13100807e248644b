"""The gateway's contract for one callback, against the session's gateway and broker.

Events are observed through a private queue bound to `studio.predictions` (`callback_kit.py`), so these tests see
exactly what the gateway published without taking messages from the persister. What a signed payload becomes is
in `test_webhook_payloads.py`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from common.references import callback_url, tag_reference
from common.signing import SIGNATURE_HEADER, sign
from services.webhook.metrics import Outcome
from services.webhook.views import MAX_BODY
from tests.callback_kit import new_id, post
from tests.helpers import WEBHOOK_SECRET, metric, samples, signed_callback

# --- signature -------------------------------------------------------------------------------------------------

BODY = json.dumps(
    {"id": "pred_signature_probe", "status": "succeeded", "output": ["https://x.skytells.ai/a.png"]}
).encode()
GOOD = sign(BODY, WEBHOOK_SECRET)

MALFORMED: list[tuple[str, list[tuple[str, str | bytes]]]] = [
    ("missing", []),
    ("empty", [(SIGNATURE_HEADER, "")]),
    ("blank", [(SIGNATURE_HEADER, "   ")]),
    ("short", [(SIGNATURE_HEADER, GOOD[:-1])]),
    ("long", [(SIGNATURE_HEADER, GOOD + "0")]),
    ("non-hex", [(SIGNATURE_HEADER, "z" * 64)]),
    ("prefix only", [(SIGNATURE_HEADER, "sha256=")]),
    ("other scheme", [(SIGNATURE_HEADER, "sha1=" + GOOD)]),
    ("wrong key", [(SIGNATURE_HEADER, sign(BODY, "not-the-secret"))]),
    ("other body", [(SIGNATURE_HEADER, sign(BODY + b" ", WEBHOOK_SECRET))]),
    ("non-ascii", [(SIGNATURE_HEADER, ("é" * 64).encode())]),
    ("latin-1 bytes", [(SIGNATURE_HEADER, GOOD[:-2].encode() + b"\xff\xfe")]),
    ("repeated", [(SIGNATURE_HEADER, GOOD), (SIGNATURE_HEADER, GOOD)]),
    ("repeated, one forged", [(SIGNATURE_HEADER, "0" * 64), (SIGNATURE_HEADER, GOOD)]),
]


async def raw_post(url: str, headers: list[tuple[str, str | bytes]], body: bytes) -> tuple[int, bytes]:
    """POST with header bytes exactly as given (HTTP clients refuse to send most malformed ones)."""
    parsed = httpx.URL(url)
    lines = [b"POST /api/webhooks HTTP/1.1", b"Host: x", b"Connection: close", b"Content-Length: %d" % len(body)]
    lines += [
        name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()) for name, value in headers
    ]
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    try:
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


@pytest.mark.parametrize("headers", [h for _, h in MALFORMED], ids=[name for name, _ in MALFORMED])
async def test_malformed_or_wrong_signature_is_401_never_500(urls, headers):
    status, payload = await raw_post(urls.webhook, headers, BODY)

    assert status == 401
    assert json.loads(payload) == {"error": "Invalid signature"}


async def test_the_correct_signature_over_raw_bytes_passes(urls, events):
    status, payload = await raw_post(urls.webhook, [(SIGNATURE_HEADER, GOOD)], BODY)

    assert status == 200 and json.loads(payload) == {"ok": True}
    assert len(await events.wait_for("pred_signature_probe")) >= 1  # the control case of the test above


async def test_refused_callbacks_publish_nothing_and_are_counted(http, urls, events):
    forged = new_id()
    body = json.dumps({"id": forged, "status": "succeeded"}).encode()
    before = (await http.get(f"{urls.webhook}/metrics")).text

    for header in ("", "0" * 64, sign(body, "wrong"), sign(body, WEBHOOK_SECRET).upper()[:-1]):
        response = await http.post(f"{urls.webhook}/api/webhooks", content=body, headers={SIGNATURE_HEADER: header})
        assert response.status_code == 401
    genuine = new_id()
    assert (await post(http, urls.webhook, {"id": genuine, "status": "succeeded"})).status_code == 200

    await events.wait_for(genuine)  # published after the forged ones, on the same channel
    assert events.messages(forged) == []
    after = (await http.get(f"{urls.webhook}/metrics")).text
    callbacks = "studio_webhook_callbacks_total"
    assert metric(after, callbacks, outcome="bad_signature") - metric(before, callbacks, outcome="bad_signature") == 4
    assert metric(after, callbacks, outcome="accepted") - metric(before, callbacks, outcome="accepted") >= 1
    assert metric(after, "studio_webhook_publish_seconds_count") > metric(
        before, "studio_webhook_publish_seconds_count"
    )


@pytest.mark.parametrize("form", ["plain", "sha256=", "SHA256="])
async def test_lowercase_hex_with_or_without_prefix_is_accepted(http, urls, events, form):
    prediction_id = new_id()
    body, _ = signed_callback({"id": prediction_id, "status": "processing"})
    header = sign(body, WEBHOOK_SECRET) if form == "plain" else form + sign(body, WEBHOOK_SECRET)

    response = await http.post(f"{urls.webhook}/api/webhooks", content=body, headers={SIGNATURE_HEADER: header})

    assert response.status_code == 200 and response.json() == {"ok": True}
    assert [e["status"] for e in await events.wait_for(prediction_id)] == ["processing"]


# --- size -------------------------------------------------------------------------------------------------------


async def _raw_exchange(url: str, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a request head and some body, never finish the body, and return what the server answers."""
    parsed = httpx.URL(url)
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    try:
        writer.write(head)
        for part in body_parts:
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()


async def test_declared_length_over_1mib_is_413_before_the_body_is_sent(urls):
    head = (
        b"POST /api/webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"{SIGNATURE_HEADER}: {GOOD}\r\nContent-Length: {100 * MAX_BODY}\r\n\r\n".encode()
    )

    answer = await _raw_exchange(urls.webhook, head, [b'{"id": '])  # 7 of 100 MiB sent, then nothing

    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_chunked_body_over_1mib_is_413_before_it_ends(urls):
    head = b"POST /api/webhooks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + (
        f"{SIGNATURE_HEADER}: {GOOD}\r\n\r\n".encode()
    )
    chunk = b" " * (256 * 1024)
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 5  # 1.25 MiB, and no terminating 0-chunk

    answer = await _raw_exchange(urls.webhook, head, parts)

    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_chunked_body_over_1mib_through_a_client_is_a_json_413(http, urls):
    async def stream() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * (64 * 1024)
        yield b"{}"

    response = await http.post(f"{urls.webhook}/api/webhooks", content=stream(), headers={SIGNATURE_HEADER: GOOD})

    assert response.status_code == 413
    assert response.json() == {"error": "Request body too large"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_of_exactly_1mib_is_accepted(http, urls, events, chunked):
    prediction_id = new_id()
    core = json.dumps({"id": prediction_id, "status": "succeeded"}).encode()
    body = core + b" " * (MAX_BODY - len(core))  # JSON allows trailing whitespace
    headers = {SIGNATURE_HEADER: sign(body, WEBHOOK_SECRET)}

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    response = await http.post(f"{urls.webhook}/api/webhooks", content=stream() if chunked else body, headers=headers)

    assert response.status_code == 200, response.text
    assert len(await events.wait_for(prediction_id)) == 1


async def test_probes_of_the_connected_gateway(http, urls):
    assert (await http.get(f"{urls.webhook}/healthz")).status_code == 200
    ready = await http.get(f"{urls.webhook}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    text = (await http.get(f"{urls.webhook}/metrics")).text
    exported = {s.labels["outcome"] for s in samples(text, "studio_webhook_callbacks_total")}
    assert exported == {str(outcome) for outcome in Outcome}
    assert metric(text, "studio_webhook_publishes_in_flight") >= 0


# --- the generation reference in the callback URL -------------------------------------------------------------


async def test_only_a_reference_tagged_by_studio_reaches_the_event(http, urls, events, settings):
    """The signature covers the body only: a captured signed body replayed with another generation's id in the
    URL must bind nothing, so the gateway passes on a reference only with Studio's own tag."""
    generation_id = uuid.uuid4()
    tagged = callback_url(urls.webhook + "/api/webhooks", generation_id, settings.skytells_webhook_secrets[0])
    forged = {
        "untagged": str(generation_id),
        "tagged under another key": tag_reference(str(generation_id), "not-the-webhook-secret-0123"),
        "another generation's tag": f"{generation_id}.{tag_reference(str(uuid.uuid4()), WEBHOOK_SECRET).split('.')[1]}",
    }
    for name, reference in forged.items():
        prediction_id = new_id()
        body, headers = signed_callback({"id": prediction_id, "status": "processing"})
        answer = await http.post(
            f"{urls.webhook}/api/webhooks", params={"generation": reference}, content=body, headers=headers
        )
        assert answer.status_code == 200, (name, answer.text)
        [event] = await events.wait_for(prediction_id)
        assert "generationId" not in event, name

    prediction_id = new_id()
    body, headers = signed_callback({"id": prediction_id, "status": "processing"})
    assert (await http.post(tagged, content=body, headers=headers)).status_code == 200
    [event] = await events.wait_for(prediction_id)
    assert event["generationId"] == str(generation_id)
