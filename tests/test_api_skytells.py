"""Every way Skytells can answer a create (or cancel) call, from a stand-in server the test controls: its
error envelope, the flat `{error_id, message}`, non-JSON bodies, timeouts, a cut or refused connection, its 429,
and a 2xx that says `"status": false`. Only a 4xx is a refusal; any answer that leaves open whether the
prediction was made keeps the generation waiting for its outcome. Also the Skytells call metrics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web

from devstack.processes import free_port
from devstack.stack import Stack
from tests.helpers import listening, metric

HANG_S = 5.0  # longer than the SKYTELLS_TIMEOUT_S the API under test gets
CREATES: list[str] = []  # the case of every create call the stand-in received


def _envelope(status: int, message: str, error_id: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"status": False, "response": message, "error": {"message": message, "error_id": error_id}}
    return web.json_response(body, status=status, headers=headers)


def _answer(case: str) -> web.Response:
    http_date = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    prediction = {"id": f"pred_{uuid.uuid4().hex}", "status": "pending", "output": None}
    return {
        "envelope": lambda: _envelope(422, "Prompt violates the content policy", "CONTENT_POLICY"),
        "flat": lambda: web.json_response({"error_id": "INVALID_MODEL", "message": "Unknown model"}, status=400),
        "forbidden": lambda: _envelope(403, "This key may not use the model", "FORBIDDEN"),
        "proxy504": lambda: web.Response(status=504, text="<html>Gateway Timeout</html>", content_type="text/html"),
        "html": lambda: web.Response(status=500, text="<html>Bad gateway</html>", content_type="text/html"),
        "html200": lambda: web.Response(status=200, text="<html>ok</html>", content_type="text/html"),
        "noid": lambda: web.json_response({"status": "pending"}, status=201),
        "ratelimit": lambda: _envelope(429, "Too many requests", "RATE_LIMITED", {"Retry-After": "7"}),
        "ratelimitdate": lambda: _envelope(429, "Slow down", "RATE_LIMITED", {"Retry-After": http_date}),
        "queued": lambda: web.json_response({**prediction, "status": False}, status=200),
        "ok": lambda: web.json_response(prediction, status=201),
        # orjson reads nesting this deep; the stdlib's encoder cannot write it back.
        "deep": lambda: web.Response(
            status=201,
            body=b'{"id": "%s", "status": "pending", "error": %s%s}'
            % (prediction["id"].encode(), b"[" * 1000, b"]" * 1000),
            content_type="application/json",
        ),
    }[case]()


async def _create(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    case = str(body["input"]["prompt"]).split()[0]
    CREATES.append(case)
    if case == "hang":
        await asyncio.sleep(HANG_S)
    if case == "cut":  # close the connection without answering
        assert request.transport is not None
        request.transport.close()
        return web.Response()
    return _answer("ok" if case == "hang" else case)


async def _cancel(request: web.Request) -> web.Response:
    return _envelope(429, "Cancel later", "RATE_LIMITED", {"Retry-After": "3"})


@pytest.fixture(scope="module")
async def fake_skytells() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/predictions", _create)
    app.router.add_post("/v1/predictions/{id}/cancel", _cancel)
    async with listening(app) as url:
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def api_on_fake(services: Stack, fake_skytells: str) -> Iterator[str]:
    port = free_port()
    env = {"API_PORT": str(port), "SKYTELLS_BASE_URL": fake_skytells, "SKYTELLS_TIMEOUT_S": "2"}
    process = services.start_service("api", env=env, label="api-fake-skytells")
    yield f"http://127.0.0.1:{port}"
    process.stop()


@pytest.fixture(scope="module")
def api_on_nothing(services: Stack) -> Iterator[str]:
    port = free_port()
    env = {"API_PORT": str(port), "SKYTELLS_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    process = services.start_service("api", env=env, label="api-no-skytells")
    yield f"http://127.0.0.1:{port}"
    process.stop()


async def _state(db, user_id: str) -> list[tuple[str, str | None]]:
    rows = await db.fetch("SELECT status, error FROM generations WHERE user_id = $1", user_id)
    return [(r["status"], r["error"]) for r in rows]


@pytest.mark.parametrize(
    "case,status,message",
    [
        ("envelope", 400, "Prompt violates the content policy"),  # a 422: Skytells says the input is invalid
        ("flat", 400, "Unknown model"),
        ("forbidden", 502, "This key may not use the model"),
    ],
)
async def test_a_refused_create_fails_the_generation_and_frees_the_slot(
    http, api_on_fake, auth, user_id, db, case, status, message
):
    response = await http.post(f"{api_on_fake}/api/generate", json={"prompt": f"{case} a cat"}, headers=auth)

    assert response.status_code == status, response.text
    assert response.json() == {"error": message}
    assert await _state(db, user_id) == [("failed", message)]


@pytest.mark.parametrize("case", ["hang", "cut", "html", "proxy504", "html200", "noid"])
async def test_an_unclear_answer_is_503_and_the_generation_waits_never_paid_twice(
    http, api_on_fake, auth, user_id, db, case
):
    # Skytells may have made the prediction: its callback, the reconciler or a repeat with the key finds it.
    body, headers = {"prompt": f"{case} a cat"}, {**auth, "Idempotency-Key": f"unclear-{uuid.uuid4()}"}
    response = await http.post(f"{api_on_fake}/api/generate", json=body, headers=headers)

    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert "error" in response.json()
    assert await _state(db, user_id) == [("queued", None)]
    calls = len(CREATES)
    repeat = await http.post(f"{api_on_fake}/api/generate", json=body, headers=headers)
    assert repeat.status_code == 200, repeat.text
    assert repeat.json()["status"] == "queued"
    assert len(CREATES) == calls  # the repeat called no one: no second (paid) prediction


async def test_an_unreachable_skytells_is_503_and_no_generation_is_made(http, api_on_nothing, auth, user_id, db):
    # The model's input schema cannot be read, and none was read before: nothing is checked, reserved or made.
    response = await http.post(f"{api_on_nothing}/api/generate", json={"prompt": "a cat"}, headers=auth)

    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    assert response.json() == {"error": "The model's input schema cannot be read from Skytells"}
    assert await _state(db, user_id) == []


async def test_skytells_429_is_503_with_its_retry_after(http, api_on_fake, auth, user_id, db):
    seconds = await http.post(f"{api_on_fake}/api/generate", json={"prompt": "ratelimit"}, headers=auth)
    date = await http.post(f"{api_on_fake}/api/generate", json={"prompt": "ratelimitdate"}, headers=auth)

    assert seconds.status_code == 503 and seconds.headers["Retry-After"] == "7"
    assert seconds.json() == {"error": "Too many requests"}
    assert date.status_code == 503 and 1 <= int(date.headers["Retry-After"]) <= 31
    assert [status for status, _ in await _state(db, user_id)] == ["failed", "failed"]


async def test_2xx_with_an_id_and_status_false_is_a_queued_prediction(http, api_on_fake, auth, user_id, db):
    response = await http.post(f"{api_on_fake}/api/generate", json={"prompt": "queued"}, headers=auth)

    assert response.status_code == 201, response.text
    assert response.json()["status"] == "queued"
    prediction_id = await db.fetchval("SELECT prediction_id FROM generations WHERE user_id = $1", user_id)
    assert prediction_id.startswith("pred_")


async def test_an_answer_nested_a_thousand_levels_deep_is_still_the_prediction(http, api_on_fake, auth, user_id, db):
    response = await http.post(f"{api_on_fake}/api/generate", json={"prompt": "deep"}, headers=auth)

    assert response.status_code == 201, response.text
    assert response.json()["status"] == "queued"
    assert (await db.fetchval("SELECT prediction_id FROM generations WHERE user_id = $1", user_id)).startswith("pred_")


async def test_cancel_rate_limited_by_skytells_is_503_and_leaves_the_generation(http, api_on_fake, auth):
    created = await http.post(f"{api_on_fake}/api/generate", json={"prompt": "ok"}, headers=auth)

    response = await http.post(f"{api_on_fake}/api/predictions/{created.json()['id']}/cancel", headers=auth)

    assert response.status_code == 503 and response.headers["Retry-After"] == "3"
    after = await http.get(f"{api_on_fake}/api/predictions/{created.json()['id']}", headers=auth)
    assert after.json()["status"] == "queued"


async def test_metrics_count_skytells_latency_and_failures(http, api_on_fake, auth):
    # Runs after the tests above in this module, on the same process: a fresh timeout and success are added.
    before = (await http.get(f"{api_on_fake}/metrics")).text
    await http.post(f"{api_on_fake}/api/generate", json={"prompt": "hang"}, headers=auth)
    await http.post(f"{api_on_fake}/api/generate", json={"prompt": "ok"}, headers=auth)
    await http.post(f"{api_on_fake}/api/generate", json={"prompt": "forbidden"}, headers=auth)

    after = (await http.get(f"{api_on_fake}/metrics")).text

    failures = "studio_skytells_failures_total"
    latency = "studio_skytells_request_duration_seconds_count"
    assert metric(after, failures, operation="create", reason="timeout") == (
        metric(before, failures, operation="create", reason="timeout") + 1
    )
    assert metric(after, latency, operation="create") == metric(before, latency, operation="create") + 3
    assert metric(after, failures, operation="create", reason="rate_limited") >= 2
    assert metric(after, failures, operation="cancel", reason="rate_limited") >= 1
    assert metric(after, "studio_http_requests_total", route="/api/generate", method="POST", status="502") >= 1
    assert "studio_http_request_duration_seconds_bucket" in after
