"""The simulator as the official `skytells` SDK sees it: every call here goes through the SDK,
pointed at the simulator with `base_url`, and what comes back is read with the SDK's own types and errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import skytells
from aiohttp import web
from skytells import ApiErrorId, PredictionStatus, SkytellsError

from common.signing import SIGNATURE_HEADER, verify
from devstack.stack import Stack
from tests.conftest import Urls
from tests.helpers import listening

MODEL = "truefusion-pro"
WAIT = {"interval": 100, "max_wait": 15_000}  # ms: poll often, give up well inside the test timeout
FAILURE = "Simulated failure: the model could not generate this image"
KNOWN_ERROR_IDS = {e.value for e in ApiErrorId}


@pytest.fixture
def client(urls: Urls, stack: Stack) -> skytells.SkytellsClient:
    return skytells.Skytells(stack.env["SIM_API_KEY"], base_url=f"{urls.simulator}/v1", timeout=20_000)


def _create(client: skytells.SkytellsClient, prompt: str, **extra: Any) -> dict[str, Any]:
    return client.predictions.create({"model": MODEL, "input": {"prompt": prompt}, **extra})


async def test_create_then_poll_until_succeeded(client: skytells.SkytellsClient, http: httpx.AsyncClient) -> None:
    created = await asyncio.to_thread(_create, client, "a lighthouse at dawn")
    assert created["id"].startswith("pred_")
    assert PredictionStatus(created["status"]) in (PredictionStatus.PENDING, PredictionStatus.STARTING)
    assert created["output"] is None

    done = await asyncio.to_thread(client.wait, created, WAIT)
    assert done["id"] == created["id"]
    assert done["status"] == PredictionStatus.SUCCEEDED
    again = await asyncio.to_thread(client.predictions.get, created["id"])
    assert again["status"] == PredictionStatus.SUCCEEDED and again["output"] == done["output"]
    output = done["output"]
    assert isinstance(output, list) and len(output) == 1
    assert "/cdn/" in output[0]
    image = await http.get(output[0])
    assert image.status_code == 200
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")


async def test_run_answers_once_finished_with_a_prediction(client: skytells.SkytellsClient) -> None:
    prediction = await asyncio.to_thread(client.run, MODEL, {"prompt": "two outputs #sim:outputs=2"})
    assert isinstance(prediction, skytells.Prediction)
    assert prediction.status == PredictionStatus.SUCCEEDED
    outputs = prediction.outputs()
    assert isinstance(outputs, list) and len(outputs) == 2
    assert all("/cdn/" in url and url.endswith(".png") for url in outputs)
    single = await asyncio.to_thread(client.run, MODEL, {"prompt": "one output"})
    assert isinstance(single.output, list) and single.outputs() == single.output[0]


async def test_failed_prediction_reads_its_message(client: skytells.SkytellsClient) -> None:
    created = await asyncio.to_thread(_create, client, "doomed #sim:fail")
    done = await asyncio.to_thread(client.wait, created, WAIT)
    assert done["status"] == PredictionStatus.FAILED
    assert done["error"] == FAILURE
    assert done["output"] is None

    with pytest.raises(SkytellsError) as caught:
        await asyncio.to_thread(client.run, MODEL, {"prompt": "doomed again #sim:fail"})
    assert caught.value.error_id == ApiErrorId.PREDICTION_FAILED
    assert str(caught.value) == FAILURE


async def test_cancel_an_unfinished_prediction(client: skytells.SkytellsClient) -> None:
    created = await asyncio.to_thread(_create, client, "slow one #sim:delay=30")
    cancelled = await asyncio.to_thread(client.cancel_prediction, created["id"])
    assert cancelled["id"] == created["id"]
    assert cancelled["status"] == PredictionStatus.CANCELLED
    # Terminal for the SDK: `wait` returns at once, and it stays cancelled.
    done = await asyncio.to_thread(client.wait, cancelled, {"interval": 100, "max_wait": 1})
    assert done["status"] == PredictionStatus.CANCELLED
    later = await asyncio.to_thread(client.predictions.get, created["id"])
    assert later["status"] == PredictionStatus.CANCELLED and later["output"] is None


@pytest.mark.parametrize(
    ("status", "error_id"),
    [(422, ApiErrorId.INVALID_INPUT), (429, ApiErrorId.RATE_LIMIT_EXCEEDED), (500, ApiErrorId.INTERNAL_ERROR)],
)
async def test_rejected_create_is_the_sdks_error(
    client: skytells.SkytellsClient, status: int, error_id: ApiErrorId
) -> None:
    with pytest.raises(SkytellsError) as caught:
        await asyncio.to_thread(_create, client, f"refused #sim:reject={status}")
    assert caught.value.http_status == status
    assert caught.value.error_id == error_id
    assert str(caught.value) == f"Simulated rejection with HTTP {status}"


async def test_wrong_api_key_is_unauthorized(urls: Urls) -> None:
    stranger = skytells.Skytells("not-the-key", base_url=f"{urls.simulator}/v1", timeout=20_000)
    with pytest.raises(SkytellsError) as caught:
        await asyncio.to_thread(_create, stranger, "who am I")
    assert caught.value.http_status == 401
    assert caught.value.error_id == ApiErrorId.UNAUTHORIZED
    assert str(caught.value) == "Invalid or missing API key"


async def test_unknown_prediction_is_an_error_with_an_id(client: skytells.SkytellsClient) -> None:
    with pytest.raises(SkytellsError) as caught:
        await asyncio.to_thread(client.predictions.get, "pred_does_not_exist")
    assert caught.value.http_status == 502
    assert caught.value.error_id and caught.value.error_id not in ("UNKNOWN_ERROR", "API_ERROR", "HTTP_ERROR")
    assert str(caught.value) == "Prediction not found"


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, asyncio.Queue[tuple[bytes, str | None]]]]:
    """A callback endpoint: what arrives (raw body, signature header) goes into the queue."""
    arrived: asyncio.Queue[tuple[bytes, str | None]] = asyncio.Queue()

    async def handle(request: web.Request) -> web.Response:
        await arrived.put((await request.read(), request.headers.get(SIGNATURE_HEADER)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with listening(app) as url:
        yield f"{url}/hook", arrived


async def test_webhook_from_sdk_request_is_signed(
    client: skytells.SkytellsClient,
    stack: Stack,
    receiver: tuple[str, asyncio.Queue[tuple[bytes, str | None]]],
) -> None:
    # The SDK has no signature helper, so the signature is checked the way Studio checks it.
    url, arrived = receiver
    prediction = await asyncio.to_thread(
        client.run, MODEL, {"prompt": "signed"}, webhook={"url": url, "events": ["completed"]}
    )
    body, signature = await asyncio.wait_for(arrived.get(), 10)
    secret = stack.env["SIM_WEBHOOK_SECRET"]
    assert verify(body, signature, [secret])
    assert not verify(body, signature, [secret + "-other"])
    payload = json.loads(body)
    assert payload["id"] == prediction.id
    assert payload["status"] == PredictionStatus.SUCCEEDED
    assert payload["output"] == prediction.output
