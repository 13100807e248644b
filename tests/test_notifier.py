"""Outbound webhooks against the real services: the notifier posts to a receiver in this process, and every
signature is checked with the `standardwebhooks` package, a verifier nobody here wrote. Failing receivers and
notifiers are in `test_notifier_failures.py`."""

from __future__ import annotations

import asyncio

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from devstack.tokens import issue_token
from tests.conftest import JWT_SECRET
from tests.helpers import eventually, wait_for_status
from tests.notifier_kit import create, deliveries_of, settled_deliveries, unsigned, webhook_key
from tests.webhook_receiver import Reply


async def test_a_completed_generation_is_posted_once_signed_as_standard_webhooks(http, urls, auth, receiver):
    key = await webhook_key(http, urls, auth)
    created = await create(http, urls, auth, "a signed lighthouse", webhook=receiver.url("hook"))
    assert created["webhook"] == receiver.url("hook") and created["webhookEventsFilter"] == ["completed"]

    final = await wait_for_status(http, urls.api, created["id"], auth)
    [delivery] = await settled_deliveries(http, urls, auth, created["id"])

    [call] = receiver.to("hook")
    payload = call.verified(key)
    assert payload["type"] == "generation.completed"
    assert unsigned(payload["data"]) == unsigned(final) and payload["data"]["status"] == "succeeded"
    told = await http.get(payload["data"]["outputUrl"])  # the webhook's own URL is valid and fetches the image
    assert told.status_code == 200 and told.content == (await http.get(final["outputUrl"])).content
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
    created = await create(http, urls, auth, "told to nobody")
    assert created["webhook"] is None and created["webhookEventsFilter"] == []
    await wait_for_status(http, urls.api, created["id"], auth)
    assert await deliveries_of(http, urls, auth, created["id"]) == []


async def test_start_and_completed_when_both_are_asked_for(http, urls, auth, receiver):
    key = await webhook_key(http, urls, auth)
    created = await create(
        http,
        urls,
        auth,
        "two events #sim:delay=1.5",
        webhook=receiver.url("both"),
        webhookEventsFilter=["start", "completed"],
    )
    assert created["webhookEventsFilter"] == ["start", "completed"]
    await wait_for_status(http, urls.api, created["id"], auth)
    items = await settled_deliveries(http, urls, auth, created["id"], count=2)

    assert [(d["event"], d["status"]) for d in items] == [("start", "delivered"), ("completed", "delivered")]
    payloads = {call.id: call.verified(key) for call in receiver.to("both")}
    assert {items[0]["id"], items[1]["id"]} == set(payloads)
    assert payloads[items[0]["id"]]["type"] == "generation.start"
    assert payloads[items[0]["id"]]["data"]["status"] == "processing"
    assert payloads[items[1]["id"]]["type"] == "generation.completed"
    assert payloads[items[1]["id"]]["data"]["status"] == "succeeded"


async def test_start_alone_is_not_told_the_end(http, urls, auth, receiver):
    created = await create(
        http, urls, auth, "only the start #sim:delay=1", webhook=receiver.url("start"), webhookEventsFilter=["start"]
    )
    await wait_for_status(http, urls.api, created["id"], auth)
    [delivery] = await settled_deliveries(http, urls, auth, created["id"])
    assert delivery["event"] == "start" and delivery["status"] == "delivered"
    assert [call.json["type"] for call in receiver.to("start")] == ["generation.start"]


async def test_a_start_still_undelivered_at_the_end_is_skipped(http, urls, auth, receiver):
    receiver.script("slow", lambda call: Reply(500) if call.json["type"] == "generation.start" else Reply(200))
    created = await create(
        http,
        urls,
        auth,
        "skip the start #sim:delay=1.5",
        webhook=receiver.url("slow"),
        webhookEventsFilter=["start", "completed"],
    )
    await wait_for_status(http, urls.api, created["id"], auth)
    items = await settled_deliveries(http, urls, auth, created["id"], count=2)

    assert [(d["event"], d["status"]) for d in items] == [("start", "skipped"), ("completed", "delivered")]
    assert items[0]["lastStatusCode"] == 500 and items[0]["nextAttemptAt"] is None
    starts = len([c for c in receiver.to("slow") if c.json["type"] == "generation.start"])
    await eventually("a quiet moment", lambda: True)
    assert len([c for c in receiver.to("slow") if c.json["type"] == "generation.start"]) == starts


async def test_a_cancel_by_the_api_is_told(http, urls, auth, receiver):
    key = await webhook_key(http, urls, auth)
    created = await create(http, urls, auth, "canceled #sim:delay=30", webhook=receiver.url("cancel"))
    response = await http.post(f"{urls.api}/api/predictions/{created['id']}/cancel", headers=auth)
    assert response.status_code == 200 and response.json()["status"] == "canceled"

    [delivery] = await settled_deliveries(http, urls, auth, created["id"])
    [call] = receiver.to("cancel")
    assert delivery["status"] == "delivered"
    assert call.verified(key)["data"]["status"] == "canceled"


async def test_a_failed_generation_is_told_its_error(http, urls, auth, receiver):
    key = await webhook_key(http, urls, auth)
    created = await create(http, urls, auth, "doomed #sim:fail", webhook=receiver.url("failed"))
    await settled_deliveries(http, urls, auth, created["id"])
    [call] = receiver.to("failed")
    data = call.verified(key)["data"]
    assert data["status"] == "failed" and data["error"]


@pytest.mark.parametrize(
    "fields",
    [
        {"webhook": "http://example.com/hook"},  # plain http to a host not in NOTIFY_ALLOW_HOSTS
        {"webhook": "ftp://example.com/hook"},
        {"webhook": "/relative/hook"},
        {"webhook": "https://"},
        {"webhook": "https://example.com:99999/hook"},
        {"webhook": "https://exa mple.com/hook"},
        {"webhook": "https://example.com/" + "a" * 2048},
        {"webhook": 42},
        {"webhook": ""},
    ],
)
async def test_an_unusable_webhook_url_is_a_400(http, urls, auth, fields):
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": "p", **fields}, headers=auth)
    assert response.status_code == 400 and response.json() == {"error": "Invalid webhook"}


@pytest.mark.parametrize("events", [[], ["finished"], ["start", "nope"], "completed", [1], None])
async def test_an_events_filter_that_is_not_a_non_empty_subset_is_a_400(http, urls, auth, events):
    body = {"prompt": "p", "webhook": "https://example.com/hook", "webhookEventsFilter": events}
    if events is None:
        body["webhookEventsFilter"] = {"start": True}
    response = await http.post(f"{urls.api}/api/generate", json=body, headers=auth)
    assert response.status_code == 400 and "webhookEventsFilter" in response.json()["error"]


async def test_after_a_rotation_both_keys_sign_for_the_overlap(http, urls, auth, receiver):
    old = await webhook_key(http, urls, auth)
    assert await webhook_key(http, urls, auth) == old  # made once, then the same
    response = await http.post(f"{urls.api}/api/webhooks/secret/rotate", headers=auth)
    assert response.status_code == 200
    new = response.json()["key"]
    assert new != old and new.startswith("whsec_") and await webhook_key(http, urls, auth) == new

    created = await create(http, urls, auth, "rotated", webhook=receiver.url("rotated"))
    await settled_deliveries(http, urls, auth, created["id"])
    [call] = receiver.to("rotated")

    assert len(call.headers["webhook-signature"].split(" ")) == 2
    assert all(part.startswith("v1,") for part in call.headers["webhook-signature"].split(" "))
    assert call.verified(new)["data"]["id"] == created["id"]
    assert call.verified(old)["data"]["id"] == created["id"]


async def test_each_user_has_a_key_of_their_own(http, urls, auth):
    other = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'someone-else-' + auth['Authorization'][-8:])}"}
    assert await webhook_key(http, urls, auth) != await webhook_key(http, urls, other)
    assert (await http.get(f"{urls.api}/api/webhooks/secret")).status_code == 401


async def test_redeliver_sends_the_same_webhook_id_again(http, urls, auth, receiver):
    key = await webhook_key(http, urls, auth)
    created = await create(http, urls, auth, "again", webhook=receiver.url("again"))
    [delivery] = await settled_deliveries(http, urls, auth, created["id"])
    answered = asyncio.Event()
    receiver.script("again", [Reply(200, hold=answered)])  # in flight until asked again while it is pending

    url = f"{urls.api}/api/predictions/{created['id']}/deliveries/{delivery['id']}/redeliver"
    try:
        response = await http.post(url, headers=auth)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "pending" and response.json()["id"] == delivery["id"]
        busy = await http.post(url, headers=auth)
        assert busy.status_code == 409
    finally:
        answered.set()

    [again] = await settled_deliveries(http, urls, auth, created["id"])
    first, second = receiver.to("again")
    assert first.id == second.id == delivery["id"]
    assert second.verified(key)["data"] == first.verified(key)["data"]  # the change it reports, as it was
    assert again["status"] == "delivered" and again["attempts"] == 2


async def test_deliveries_of_someone_elses_generation_are_404(http, urls, auth, receiver):
    created = await create(http, urls, auth, "mine", webhook=receiver.url("mine"))
    [delivery] = await settled_deliveries(http, urls, auth, created["id"])
    other = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'intruder')}"}
    base = f"{urls.api}/api/predictions/{created['id']}/deliveries"
    assert (await http.get(base, headers=other)).status_code == 404
    assert (await http.post(f"{base}/{delivery['id']}/redeliver", headers=other)).status_code == 404
    assert (await http.post(f"{base}/{created['id']}/redeliver", headers=auth)).status_code == 404
    assert (await http.post(f"{base}/not-a-uuid/redeliver", headers=auth)).status_code == 404


async def test_a_create_skytells_refuses_is_told_to_no_one(http, urls, auth, user_id, receiver, db):
    body = {"prompt": "refused #sim:reject=422", "webhook": receiver.url("refused")}
    response = await http.post(f"{urls.api}/api/generate", json=body, headers=auth)
    assert response.status_code == 400
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE user_id = $1", user_id) == 0
    assert await db.fetchval("SELECT count(*) FROM generations WHERE user_id = $1", user_id) == 1
