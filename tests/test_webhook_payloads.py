"""What a signed callback's payload becomes: refused with a 400 when unusable, else one normalised event
(whatever shape Skytells sent it in), with one event id per fact, against the session's gateway and broker."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import pytest

from common.signing import SIGNATURE_HEADER, sign
from tests.callback_kit import new_id, post
from tests.helpers import WEBHOOK_SECRET, signed_callback

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
