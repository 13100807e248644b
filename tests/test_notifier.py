"""Outbound webhooks against the real services: the notifier posts to a receiver in this process, and every
signature is checked with the `standardwebhooks` package, a verifier nobody here wrote."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from devstack.processes import free_port
from devstack.tokens import issue_token
from tests.conftest import JWT_SECRET
from tests.helpers import eventually, metric, metrics_of, wait_for_status
from tests.webhook_receiver import Receiver, Reply, receiving


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


async def test_start_and_completed_when_both_are_asked_for(http, urls, auth, receiver):
    key = await _key(http, urls, auth)
    created = await _create(
        http,
        urls,
        auth,
        "two events #sim:delay=1.5",
        webhook=receiver.url("both"),
        webhookEventsFilter=["start", "completed"],
    )
    assert created["webhookEventsFilter"] == ["start", "completed"]
    await wait_for_status(http, urls.api, created["id"], auth)
    items = await _settled(http, urls, auth, created["id"], count=2)

    assert [(d["event"], d["status"]) for d in items] == [("start", "delivered"), ("completed", "delivered")]
    payloads = {call.id: call.verified(key) for call in receiver.to("both")}
    assert {items[0]["id"], items[1]["id"]} == set(payloads)
    assert payloads[items[0]["id"]]["type"] == "generation.start"
    assert payloads[items[0]["id"]]["data"]["status"] == "processing"
    assert payloads[items[1]["id"]]["type"] == "generation.completed"
    assert payloads[items[1]["id"]]["data"]["status"] == "succeeded"


async def test_start_alone_is_not_told_the_end(http, urls, auth, receiver):
    created = await _create(
        http, urls, auth, "only the start #sim:delay=1", webhook=receiver.url("start"), webhookEventsFilter=["start"]
    )
    await wait_for_status(http, urls.api, created["id"], auth)
    [delivery] = await _settled(http, urls, auth, created["id"])
    assert delivery["event"] == "start" and delivery["status"] == "delivered"
    assert [call.json["type"] for call in receiver.to("start")] == ["generation.start"]


async def test_a_start_still_undelivered_at_the_end_is_skipped(http, urls, auth, receiver):
    receiver.script("slow", lambda call: Reply(500) if call.json["type"] == "generation.start" else Reply(200))
    created = await _create(
        http,
        urls,
        auth,
        "skip the start #sim:delay=1.5",
        webhook=receiver.url("slow"),
        webhookEventsFilter=["start", "completed"],
    )
    await wait_for_status(http, urls.api, created["id"], auth)
    items = await _settled(http, urls, auth, created["id"], count=2)

    assert [(d["event"], d["status"]) for d in items] == [("start", "skipped"), ("completed", "delivered")]
    assert items[0]["lastStatusCode"] == 500 and items[0]["nextAttemptAt"] is None
    starts = len([c for c in receiver.to("slow") if c.json["type"] == "generation.start"])
    await eventually("a quiet moment", lambda: True)
    assert len([c for c in receiver.to("slow") if c.json["type"] == "generation.start"]) == starts


async def test_a_cancel_by_the_api_is_told(http, urls, auth, receiver):
    key = await _key(http, urls, auth)
    created = await _create(http, urls, auth, "canceled #sim:delay=30", webhook=receiver.url("cancel"))
    response = await http.post(f"{urls.api}/api/predictions/{created['id']}/cancel", headers=auth)
    assert response.status_code == 200 and response.json()["status"] == "canceled"

    [delivery] = await _settled(http, urls, auth, created["id"])
    [call] = receiver.to("cancel")
    assert delivery["status"] == "delivered"
    assert call.verified(key)["data"]["status"] == "canceled"


async def test_a_failed_generation_is_told_its_error(http, urls, auth, receiver):
    key = await _key(http, urls, auth)
    created = await _create(http, urls, auth, "doomed #sim:fail", webhook=receiver.url("failed"))
    await _settled(http, urls, auth, created["id"])
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


async def test_a_410_ends_every_pending_delivery_to_that_url(http, urls, auth, receiver):
    gone = False
    receiver.script("gone", lambda call: Reply(410) if gone else Reply(500))
    first = await _create(http, urls, auth, "first", webhook=receiver.url("gone"))
    second = await _create(http, urls, auth, "second", webhook=receiver.url("gone"))
    other = await _create(http, urls, auth, "elsewhere", webhook=receiver.url("other"))
    for created in (first, second):

        async def retrying(generation_id: str = created["id"]) -> bool:
            items = await _deliveries(http, urls, auth, generation_id)
            return bool(items) and items[0]["lastStatusCode"] == 500

        await eventually("a failed attempt", retrying)
    gone = True
    [one] = await _settled(http, urls, auth, first["id"])
    [two] = await _settled(http, urls, auth, second["id"])

    assert one["status"] == two["status"] == "failed"
    goners = [call for call in receiver.to("gone") if call.json]
    seen_410 = len(goners)
    await eventually("a quiet moment", lambda: True, interval=1)
    assert len(receiver.to("gone")) == seen_410  # nothing after the 410
    statuses = sorted([one["lastStatusCode"], two["lastStatusCode"]], key=str)
    assert 410 in statuses
    assert (await _settled(http, urls, auth, other["id"]))[0]["status"] == "delivered"  # another URL is not affected


async def test_429_with_retry_after_waits_that_long(http, urls, auth, receiver):
    receiver.script("throttled", [Reply(429, {"Retry-After": "2"})])
    created = await _create(http, urls, auth, "throttled", webhook=receiver.url("throttled"))
    [delivery] = await _settled(http, urls, auth, created["id"])

    first, second = receiver.to("throttled")
    assert first.id == second.id
    assert second.at - first.at >= 1.9  # a backoff alone would have come back within 0.3 s
    assert delivery["status"] == "delivered" and delivery["attempts"] == 2


async def test_other_failures_back_off_exponentially_then_deliver(http, urls, auth, receiver):
    receiver.script("flaky", [Reply(500), Reply(502), Reply(404), Reply(500)])
    created = await _create(http, urls, auth, "flaky", webhook=receiver.url("flaky"))

    async def pending_with_a_500() -> dict | None:
        items = await _deliveries(http, urls, auth, created["id"])
        return items[0] if items and items[0]["lastStatusCode"] == 500 and items[0]["status"] == "pending" else None

    retrying = await eventually("a retry scheduled", pending_with_a_500)
    assert retrying["nextAttemptAt"] is not None and "500" in retrying["lastError"]

    [delivery] = await _settled(http, urls, auth, created["id"])
    calls = receiver.to("flaky")
    assert delivery["status"] == "delivered" and delivery["attempts"] == 5 == len(calls)
    assert len({call.id for call in calls}) == 1  # the same webhook-id on every attempt
    gaps = [b.at - a.at for a, b in zip(calls, calls[1:], strict=False)]
    # Full jitter: each pause at most the base (0.3 s here) doubled per attempt, capped at 2 s (plus slack).
    for n, gap in enumerate(gaps):
        assert gap <= min(2.0, 0.3 * 2**n) + 1.0, gaps


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(http, urls, auth, receiver):
    receiver.script("moved", lambda call: Reply(302, {"Location": receiver.url("elsewhere")}))
    created = await _create(http, urls, auth, "moved", webhook=receiver.url("moved"))

    async def failed_once() -> dict | None:
        items = await _deliveries(http, urls, auth, created["id"])
        return items[0] if items and items[0]["attempts"] >= 2 else None

    delivery = await eventually("two attempts", failed_once)
    assert delivery["status"] == "pending" and delivery["lastStatusCode"] == 302
    assert "redirect" in delivery["lastError"]
    assert receiver.to("elsewhere") == []


async def test_a_destination_resolving_to_a_private_address_fails_at_once_without_connecting(http, urls, auth):
    connections = 0

    def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # https and a name, so the API takes it; `localhost` is not in NOTIFY_ALLOW_HOSTS and resolves to loopback.
        created = await _create(http, urls, auth, "inward", webhook=f"https://localhost:{port}/hook")
        [delivery] = await _settled(http, urls, auth, created["id"])
    finally:
        server.close()
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert "non-public" in delivery["lastError"] and delivery["lastStatusCode"] is None
    assert connections == 0


async def test_after_a_rotation_both_keys_sign_for_the_overlap(http, urls, auth, receiver):
    old = await _key(http, urls, auth)
    assert await _key(http, urls, auth) == old  # made once, then the same
    response = await http.post(f"{urls.api}/api/webhooks/secret/rotate", headers=auth)
    assert response.status_code == 200
    new = response.json()["key"]
    assert new != old and new.startswith("whsec_") and await _key(http, urls, auth) == new

    created = await _create(http, urls, auth, "rotated", webhook=receiver.url("rotated"))
    await _settled(http, urls, auth, created["id"])
    [call] = receiver.to("rotated")

    assert len(call.headers["webhook-signature"].split(" ")) == 2
    assert all(part.startswith("v1,") for part in call.headers["webhook-signature"].split(" "))
    assert call.verified(new)["data"]["id"] == created["id"]
    assert call.verified(old)["data"]["id"] == created["id"]


async def test_each_user_has_a_key_of_their_own(http, urls, auth):
    other = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'someone-else-' + auth['Authorization'][-8:])}"}
    assert await _key(http, urls, auth) != await _key(http, urls, other)
    assert (await http.get(f"{urls.api}/api/webhooks/secret")).status_code == 401


async def test_redeliver_sends_the_same_webhook_id_again(http, urls, auth, receiver):
    key = await _key(http, urls, auth)
    created = await _create(http, urls, auth, "again", webhook=receiver.url("again"))
    [delivery] = await _settled(http, urls, auth, created["id"])
    receiver.script("again", [Reply(200, delay_s=1.5)])  # slow enough to ask again while it is pending

    url = f"{urls.api}/api/predictions/{created['id']}/deliveries/{delivery['id']}/redeliver"
    response = await http.post(url, headers=auth)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending" and response.json()["id"] == delivery["id"]
    busy = await http.post(url, headers=auth)
    assert busy.status_code == 409

    [again] = await _settled(http, urls, auth, created["id"])
    first, second = receiver.to("again")
    assert first.id == second.id == delivery["id"]
    assert second.verified(key)["data"] == first.verified(key)["data"]  # the change it reports, as it was
    assert again["status"] == "delivered" and again["attempts"] == 2


async def test_deliveries_of_someone_elses_generation_are_404(http, urls, auth, receiver):
    created = await _create(http, urls, auth, "mine", webhook=receiver.url("mine"))
    [delivery] = await _settled(http, urls, auth, created["id"])
    other = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'intruder')}"}
    base = f"{urls.api}/api/predictions/{created['id']}/deliveries"
    assert (await http.get(base, headers=other)).status_code == 404
    assert (await http.post(f"{base}/{delivery['id']}/redeliver", headers=other)).status_code == 404
    assert (await http.post(f"{base}/{created['id']}/redeliver", headers=auth)).status_code == 404
    assert (await http.post(f"{base}/not-a-uuid/redeliver", headers=auth)).status_code == 404


async def test_the_notifier_counts_its_outcomes(http, urls, auth, receiver, services):
    created = await _create(http, urls, auth, "counted", webhook=receiver.url("counted"))
    await _settled(http, urls, auth, created["id"])
    text = await metrics_of(http, services.env["NOTIFIER_PORT"])
    assert metric(text, "studio_notifier_deliveries_total", outcome="delivered") >= 1
    assert "studio_notifier_attempt_duration_seconds_bucket" in text
    assert "studio_notifier_pending" in text and "studio_notifier_oldest_pending_seconds" in text


async def test_a_notifier_killed_mid_delivery_loses_nothing(http, urls, auth, receiver, services):
    key = await _key(http, urls, auth)
    receiver.script("held", [Reply(200, delay_s=1.5)])  # the first attempt is still in flight when it dies
    created = await _create(http, urls, auth, "survives a crash", webhook=receiver.url("held"))
    try:
        await eventually("the first attempt", lambda: receiver.to("held"))
        await asyncio.to_thread(services.processes["notifier"].kill)  # SIGKILL, mid-request
    finally:
        await asyncio.to_thread(services.start_service, "notifier")
    [delivery] = await _settled(http, urls, auth, created["id"])

    calls = receiver.to("held")
    assert delivery["status"] == "delivered"
    assert len(calls) >= 2 and {call.id for call in calls} == {delivery["id"]}  # at least once, same id
    assert all(call.verified(key)["data"]["id"] == created["id"] for call in calls)


async def test_two_replicas_share_the_work_and_each_delivery_goes_out_once(http, urls, auth, receiver, services):
    port = str(free_port())
    await asyncio.to_thread(services.start_service, "notifier", {"NOTIFIER_PORT": port}, "notifier-2")
    try:
        before = metric(await metrics_of(http, port), "studio_notifier_deliveries_total", outcome="delivered")
        created = [await _create(http, urls, auth, f"shared {n}", webhook=receiver.url("pair")) for n in range(8)]
        settled = [(await _settled(http, urls, auth, c["id"]))[0] for c in created]
        after = metric(await metrics_of(http, port), "studio_notifier_deliveries_total", outcome="delivered")
    finally:
        await asyncio.to_thread(services.processes["notifier-2"].stop)
    calls = receiver.to("pair")
    assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in settled)
    assert sorted(call.id for call in calls) == sorted(d["id"] for d in settled)  # each exactly once
    assert after - before <= len(created)


async def test_a_create_skytells_refuses_is_told_to_no_one(http, urls, auth, user_id, receiver, db):
    body = {"prompt": "refused #sim:reject=422", "webhook": receiver.url("refused")}
    response = await http.post(f"{urls.api}/api/generate", json=body, headers=auth)
    assert response.status_code == 400
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE user_id = $1", user_id) == 0
    assert await db.fetchval("SELECT count(*) FROM generations WHERE user_id = $1", user_id) == 1


async def test_past_max_age_a_failing_delivery_ends_failed(http, urls, auth, receiver, db):
    receiver.script("down", lambda call: Reply(503))  # no Retry-After: plain backoff
    created = await _create(http, urls, auth, "never heard", webhook=receiver.url("down"))
    await eventually("a failed attempt", lambda: receiver.to("down"))
    # As if the change were older than NOTIFY_MAX_AGE_S: the next failure is the last.
    await db.execute(
        "UPDATE webhook_deliveries SET changed_at = now() - interval '1 day' WHERE generation_id = $1::uuid",
        created["id"],
    )
    [delivery] = await _settled(http, urls, auth, created["id"])
    assert delivery["status"] == "failed" and delivery["lastStatusCode"] == 503
    assert "given up" in delivery["lastError"] and delivery["nextAttemptAt"] is None


async def test_a_slow_receiver_delays_only_its_own_deliveries(http, urls, auth):
    async with receiving("127.0.0.1") as slow, receiving("127.0.0.2") as quick:
        slow.script("stuck", lambda call: Reply(500, delay_s=1.5))
        stuck = [
            await _create(http, urls, auth, f"stuck {n} #sim:delay=0", webhook=slow.url("stuck")) for n in range(8)
        ]
        await eventually("the slow receiver busy", lambda: slow.in_flight >= 4)
        created = await _create(http, urls, auth, "quick #sim:delay=0", webhook=quick.url("quick"))
        await wait_for_status(http, urls.api, created["id"], auth)
        started = asyncio.get_running_loop().time()
        await eventually("the quick delivery", lambda: quick.to("quick"), timeout=10)
        waited = asyncio.get_running_loop().time() - started
        assert waited < 1.0, waited  # not behind the slow receiver's queue
        assert slow.most_in_flight <= 4  # one replica, one host: at most 4 at once
        assert len(stuck) == 8
