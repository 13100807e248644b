"""Outbound webhooks against the real services: the notifier posts to a receiver in this process, and every
signature is checked with the `standardwebhooks` package, a verifier nobody here wrote."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.helpers import eventually, wait_for_status
from tests.webhook_receiver import Receiver, receiving


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as receiver:
        yield receiver


async def _create(http, urls, auth, prompt: str, **fields: Any) -> dict:
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt, **fields}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


async def _key(http, urls, auth) -> str:
    response = await http.get(f"{urls.api}/api/webhooks/secret", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["key"]


async def _deliveries(http, urls, auth, generation_id: str) -> list[dict]:
    response = await http.get(f"{urls.api}/api/predictions/{generation_id}/deliveries", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def _settled(http, urls, auth, generation_id: str, count: int = 1, timeout: float = 20) -> list[dict]:
    """The generation's deliveries once `count` of them exist and none is pending."""

    async def done() -> list[dict] | None:
        items = await _deliveries(http, urls, auth, generation_id)
        return items if len(items) == count and all(d["status"] != "pending" for d in items) else None

    settled: list[dict] = await eventually(f"deliveries of {generation_id} to settle", done, timeout)
    return settled


async def test_a_completed_generation_is_posted_once_signed_as_standard_webhooks(http, urls, auth, receiver):
    key = await _key(http, urls, auth)
    created = await _create(http, urls, auth, "a signed lighthouse", webhook=receiver.url("hook"))
    assert created["webhook"] == receiver.url("hook") and created["webhookEventsFilter"] == ["completed"]

    final = await wait_for_status(http, urls.api, created["id"], auth)
    [delivery] = await _settled(http, urls, auth, created["id"])

    [call] = receiver.to("hook")
    payload = call.verified(key)
    assert payload["type"] == "generation.completed"
    assert payload["data"] == final and payload["data"]["status"] == "succeeded"
    assert call.headers["User-Agent"] == "Studio-Webhooks/1"
    assert call.headers["Content-Type"] == "application/json"
    assert call.id == delivery["id"]
    assert delivery | {"createdAt": None, "deliveredAt": None} == {
        "id": call.id,
        "event": "completed",
        "url": receiver.url("hook"),
        "status": "delivered",
        "attempts": 1,
        "lastStatusCode": 200,
        "lastError": None,
        "nextAttemptAt": None,
        "deliveredAt": None,
        "createdAt": None,
    }
    assert delivery["deliveredAt"] is not None
    with pytest.raises(WebhookVerificationError):  # another user's key does not verify it
        Webhook("whsec_" + "A" * 43 + "=").verify(call.body, call.headers)


async def test_no_webhook_no_delivery(http, urls, auth, receiver):
    created = await _create(http, urls, auth, "told to nobody")
    assert created["webhook"] is None and created["webhookEventsFilter"] == []
    await wait_for_status(http, urls.api, created["id"], auth)
    assert await _deliveries(http, urls, auth, created["id"]) == []
