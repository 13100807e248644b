"""The gateway's contract for one callback, against the session's gateway and broker.

Events are observed through a private queue bound to `studio.predictions`, so these tests see exactly what the
gateway published without taking messages from the persister.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import pytest

from common.references import callback_url, tag_reference
from common.signing import SIGNATURE_HEADER, sign
from common.topology import EXCHANGE
from services.webhook.metrics import Outcome
from services.webhook.views import MAX_BODY
from tests.helpers import WEBHOOK_SECRET, eventually, metric, samples, signed_callback


def new_id() -> str:
    return f"pred_{uuid.uuid4().hex[:16]}"


class Events:
    """Every event the gateway publishes while a test runs, by prediction id."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue) -> None:
        self.queue = queue
        self.seen: dict[str, list[aio_pika.abc.AbstractIncomingMessage]] = {}

    async def wait_for(self, prediction_id: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        async def arrived() -> bool:
            while (message := await self.queue.get(no_ack=True, fail=False)) is not None:
                self.seen.setdefault(json.loads(message.body)["predictionId"], []).append(message)
            return len(self.seen.get(prediction_id, [])) >= count

        await eventually(f"{count} event(s) for {prediction_id}", arrived, timeout, interval=0.02)
        return [json.loads(m.body) for m in self.seen[prediction_id]]

    def messages(self, prediction_id: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        return self.seen.get(prediction_id, [])


@pytest.fixture
async def events(settings, services) -> AsyncIterator[Events]:
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    exchange = await channel.get_exchange(EXCHANGE)  # declared by the gateway, checked passively here
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, "prediction.#")
    yield Events(queue)
    await connection.close()


async def post(http: httpx.AsyncClient, url: str, payload: Any, secret: str = WEBHOOK_SECRET) -> httpx.Response:
    body, headers = signed_callback(payload, secret)
    return await http.post(f"{url}/api/webhooks", content=body, headers=headers)


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


# --- payload ----------------------------------------------------------------------------------------------------

BAD_PAYLOADS: list[tuple[str, bytes]] = [
    ("not json", b"status=succeeded&id=pred_1"),
    ("not utf-8", b'{"id": "pred_\xff", "status": "succeeded"}'),
    ("empty body", b""),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000),
    ("array", b"[]"),
    ("string", b'"pred_1"'),
    ("no id", b'{"status": "succeeded"}'),
    ("no status", b'{"id": "pred_1"}'),
    ("empty id", b'{"id": " ", "status": "succeeded"}'),
    ("numeric id", b'{"id": 7, "status": "succeeded"}'),
    ("null status", b'{"id": "pred_1", "status": null}'),
    ("output of numbers", b'{"id": "pred_1", "status": "succeeded", "output": [1, 2]}'),
    ("envelope without prediction", b'{"type": "prediction.succeeded", "created_at": "x", "data": {}}'),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_PAYLOADS], ids=[name for name, _ in BAD_PAYLOADS])
async def test_signed_but_unusable_payload_is_400(http, urls, body):
    response = await http.post(
        f"{urls.webhook}/api/webhooks", content=body, headers={SIGNATURE_HEADER: sign(body, WEBHOOK_SECRET)}
    )

    assert response.status_code == 400
    assert set(response.json()) == {"error"}


URL_A = "https://cdn.skytells.ai/a.png"
URL_B = "https://cdn.skytells.ai/b.png"

# (payload built around a prediction id, expected status, skytellsStatus, output, error)
SHAPES: list[tuple[str, Any, str, str, list[str], str | None]] = [
    (
        "bare, output list",
        {"status": "succeeded", "output": [URL_A, URL_B]},
        "succeeded",
        "succeeded",
        [URL_A, URL_B],
        None,
    ),
    ("output string", {"status": "succeeded", "output": URL_A}, "succeeded", "succeeded", [URL_A], None),
    ("output null", {"status": "processing", "output": None}, "processing", "processing", [], None),
    ("output absent", {"status": "starting"}, "queued", "starting", [], None),
    ("model string", {"status": "started", "model": "truefusion-pro"}, "processing", "started", [], None),
    (
        "model object",
        {"status": "pending", "model": {"name": "truefusion-pro", "type": "image"}},
        "queued",
        "pending",
        [],
        None,
    ),
    ("cancelled", {"status": "cancelled"}, "canceled", "cancelled", [], None),
    ("canceled", {"status": "canceled"}, "canceled", "canceled", [], None),
    ("failed with message", {"status": "failed", "error": "NSFW content"}, "failed", "failed", [], "NSFW content"),
    ("failed with object", {"status": "failed", "error": {"message": "GPU lost"}}, "failed", "failed", [], "GPU lost"),
    # Skytells' own SDK reads a failed prediction's message from `response` when `error` is empty.
    (
        "failed, message in response",
        {"status": "failed", "error": None, "response": "OOM"},
        "failed",
        "failed",
        [],
        "OOM",
    ),
    (
        "succeeded, response ignored",
        {"status": "succeeded", "output": [URL_A], "response": "ok"},
        "succeeded",
        "succeeded",
        [URL_A],
        None,
    ),
    ("status in capitals", {"status": "SUCCEEDED", "output": [URL_A]}, "succeeded", "succeeded", [URL_A], None),
    ("unknown status", {"status": "warming_up"}, "processing", "warming_up", [], None),
    ("envelope", "envelope", "succeeded", "succeeded", [URL_A], None),
]


@pytest.mark.parametrize(
    ("payload", "status", "skytells_status", "output", "error"),
    [s[1:] for s in SHAPES],
    ids=[s[0] for s in SHAPES],
)
async def test_payload_shapes_become_one_normalised_event(
    http, urls, events, payload, status, skytells_status, output, error
):
    prediction_id = new_id()
    if payload == "envelope":
        body: Any = {
            "type": "prediction.succeeded",
            "created_at": "2026-01-01T00:00:00Z",
            "data": {
                "id": prediction_id,
                "status": "succeeded",
                "output": [URL_A],
                "model": {"name": "m", "type": "t"},
            },
        }
    else:
        body = {"id": prediction_id, **payload}

    response = await post(http, urls.webhook, body)

    assert response.status_code == 200, response.text
    [event] = await events.wait_for(prediction_id)
    assert event["predictionId"] == prediction_id
    assert event["status"] == status
    assert event["skytellsStatus"] == skytells_status
    assert event["output"] == output
    assert event["error"] == error
    assert event["source"] == "webhook"
    assert uuid.UUID(event["eventId"])
    assert event["receivedAt"].endswith("+00:00")
    [message] = events.messages(prediction_id)
    assert message.routing_key == f"prediction.{status}"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert message.message_id == event["eventId"]


async def test_an_error_nested_a_thousand_levels_deep_is_accepted_not_a_500(http, urls, events):
    """orjson reads nesting the stdlib's encoder cannot write back: the prediction is still usable (answered 200
    and published, its error said to be unshowable), never a 500 that Skytells would retry for ever."""
    prediction_id = new_id()
    depth = 1000
    body = b'{"id": "%s", "status": "failed", "error": %s%s}' % (prediction_id.encode(), b"[" * depth, b"]" * depth)

    response = await http.post(f"{urls.webhook}/api/webhooks", content=body, headers=signed_callback(body)[1])

    assert response.status_code == 200, response.text
    [event] = await events.wait_for(prediction_id)
    assert event["status"] == "failed"
    assert event["error"] == "error details nested too deeply to show"


async def test_same_callback_twice_gives_the_same_event_id_and_a_new_one_another(http, urls, events):
    prediction_id = new_id()
    done = {"id": prediction_id, "status": "succeeded", "output": [URL_A]}
    enveloped = {"type": "prediction.succeeded", "created_at": "2026-01-01T00:00:00Z", "data": done}

    for payload in (done, done, enveloped, {"id": prediction_id, "status": "processing"}):
        assert (await post(http, urls.webhook, payload)).status_code == 200

    first, again, envelope, started = await events.wait_for(prediction_id, count=4)
    assert first["eventId"] == again["eventId"] == envelope["eventId"]  # one fact, one id: deduped downstream
    assert started["eventId"] != first["eventId"]


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
