"""Outbound webhooks when something fails: a receiver that is gone, busy, failing, redirecting, private or
slow, a delivery past its max age, a notifier killed mid-delivery, two replicas sharing the work."""

from __future__ import annotations

import asyncio

from devstack.processes import free_port
from tests.helpers import eventually, metric, metrics_of, wait_for_status
from tests.notifier_kit import create, deliveries_of, settled_deliveries, webhook_key
from tests.webhook_receiver import Reply, receiving


async def test_a_410_ends_every_pending_delivery_to_that_url(http, urls, auth, receiver):
    gone = False
    receiver.script("gone", lambda call: Reply(410) if gone else Reply(500))
    first = await create(http, urls, auth, "first", webhook=receiver.url("gone"))
    second = await create(http, urls, auth, "second", webhook=receiver.url("gone"))
    other = await create(http, urls, auth, "elsewhere", webhook=receiver.url("other"))
    for created in (first, second):

        async def retrying(generation_id: str = created["id"]) -> bool:
            items = await deliveries_of(http, urls, auth, generation_id)
            return bool(items) and items[0]["lastStatusCode"] == 500

        await eventually("a failed attempt", retrying)
    gone = True
    [one] = await settled_deliveries(http, urls, auth, first["id"])
    [two] = await settled_deliveries(http, urls, auth, second["id"])

    assert one["status"] == two["status"] == "failed"
    goners = [call for call in receiver.to("gone") if call.json]
    seen_410 = len(goners)
    await eventually("a quiet moment", lambda: True, interval=1)
    assert len(receiver.to("gone")) == seen_410  # nothing after the 410
    statuses = sorted([one["lastStatusCode"], two["lastStatusCode"]], key=str)
    assert 410 in statuses
    assert (await settled_deliveries(http, urls, auth, other["id"]))[0][
        "status"
    ] == "delivered"  # another URL is not affected


async def test_429_with_retry_after_waits_that_long(http, urls, auth, receiver):
    receiver.script("throttled", [Reply(429, {"Retry-After": "2"})])
    created = await create(http, urls, auth, "throttled", webhook=receiver.url("throttled"))
    [delivery] = await settled_deliveries(http, urls, auth, created["id"])

    first, second = receiver.to("throttled")
    assert first.id == second.id
    assert second.at - first.at >= 1.9  # a backoff alone would have come back within 0.3 s
    assert delivery["status"] == "delivered" and delivery["attempts"] == 2


async def test_other_failures_back_off_exponentially_then_deliver(http, urls, auth, receiver):
    # The second attempt is held while the first one's outcome is read: a retry after a jittered pause of as
    # little as 0 s left too short a window to see it in.
    second = asyncio.Event()
    receiver.script("flaky", [Reply(500), Reply(502, hold=second), Reply(404), Reply(500)])
    created = await create(http, urls, auth, "flaky", webhook=receiver.url("flaky"))

    async def pending_with_a_500() -> dict | None:
        items = await deliveries_of(http, urls, auth, created["id"])
        return items[0] if items and items[0]["lastStatusCode"] == 500 and items[0]["status"] == "pending" else None

    try:
        retrying = await eventually("a retry scheduled", pending_with_a_500)
    finally:
        second.set()
    assert retrying["nextAttemptAt"] is not None and "500" in retrying["lastError"] and retrying["attempts"] == 1

    [delivery] = await settled_deliveries(http, urls, auth, created["id"])
    calls = receiver.to("flaky")
    assert delivery["status"] == "delivered" and delivery["attempts"] == 5 == len(calls)
    assert len({call.id for call in calls}) == 1  # the same webhook-id on every attempt
    gaps = [b.at - a.at for a, b in zip(calls, calls[1:], strict=False)]
    # Full jitter: each pause at most the base (0.3 s here) doubled per attempt, capped at 2 s (plus slack); the
    # pause after the held attempt is timed from its arrival, so it holds the hold too.
    for n, gap in enumerate(gaps):
        assert n == 1 or gap <= min(2.0, 0.3 * 2**n) + 1.0, gaps


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(http, urls, auth, receiver):
    receiver.script("moved", lambda call: Reply(302, {"Location": receiver.url("elsewhere")}))
    created = await create(http, urls, auth, "moved", webhook=receiver.url("moved"))

    async def failed_once() -> dict | None:
        items = await deliveries_of(http, urls, auth, created["id"])
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
        created = await create(http, urls, auth, "inward", webhook=f"https://localhost:{port}/hook")
        [delivery] = await settled_deliveries(http, urls, auth, created["id"])
    finally:
        server.close()
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert "non-public" in delivery["lastError"] and delivery["lastStatusCode"] is None
    assert connections == 0


async def test_the_notifier_counts_its_outcomes(http, urls, auth, receiver, services):
    created = await create(http, urls, auth, "counted", webhook=receiver.url("counted"))
    await settled_deliveries(http, urls, auth, created["id"])
    text = await metrics_of(http, services.env["NOTIFIER_PORT"])
    assert metric(text, "studio_notifier_deliveries_total", outcome="delivered") >= 1
    assert "studio_notifier_attempt_duration_seconds_bucket" in text
    assert "studio_notifier_pending" in text and "studio_notifier_oldest_pending_seconds" in text


async def test_a_notifier_killed_mid_delivery_loses_nothing(http, urls, auth, receiver, services):
    key = await webhook_key(http, urls, auth)
    receiver.script("held", [Reply(200, delay_s=1.5)])  # the first attempt is still in flight when it dies
    created = await create(http, urls, auth, "survives a crash", webhook=receiver.url("held"))
    try:
        await eventually("the first attempt", lambda: receiver.to("held"))
        await asyncio.to_thread(services.processes["notifier"].kill)  # SIGKILL, mid-request
    finally:
        await asyncio.to_thread(services.start_service, "notifier")
    [delivery] = await settled_deliveries(http, urls, auth, created["id"])

    calls = receiver.to("held")
    assert delivery["status"] == "delivered"
    assert len(calls) >= 2 and {call.id for call in calls} == {delivery["id"]}  # at least once, same id
    assert all(call.verified(key)["data"]["id"] == created["id"] for call in calls)


async def test_two_replicas_share_the_work_and_each_delivery_goes_out_once(http, urls, auth, receiver, services):
    port = str(free_port())
    await asyncio.to_thread(services.start_service, "notifier", {"NOTIFIER_PORT": port}, "notifier-2")
    try:
        before = metric(await metrics_of(http, port), "studio_notifier_deliveries_total", outcome="delivered")
        created = [await create(http, urls, auth, f"shared {n}", webhook=receiver.url("pair")) for n in range(8)]
        settled = [(await settled_deliveries(http, urls, auth, c["id"]))[0] for c in created]
        after = metric(await metrics_of(http, port), "studio_notifier_deliveries_total", outcome="delivered")
    finally:
        await asyncio.to_thread(services.processes["notifier-2"].stop)
    calls = receiver.to("pair")
    assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in settled)
    assert sorted(call.id for call in calls) == sorted(d["id"] for d in settled)  # each exactly once
    assert after - before <= len(created)


async def test_past_max_age_a_failing_delivery_ends_failed(http, urls, auth, receiver, db):
    receiver.script("down", lambda call: Reply(503))  # no Retry-After: plain backoff
    created = await create(http, urls, auth, "never heard", webhook=receiver.url("down"))
    await eventually("a failed attempt", lambda: receiver.to("down"))
    # As if the change were older than NOTIFY_MAX_AGE_S: the next failure is the last.
    await db.execute(
        "UPDATE webhook_deliveries SET changed_at = now() - interval '1 day' WHERE generation_id = $1::uuid",
        created["id"],
    )
    [delivery] = await settled_deliveries(http, urls, auth, created["id"])
    assert delivery["status"] == "failed" and delivery["lastStatusCode"] == 503
    assert "given up" in delivery["lastError"] and delivery["nextAttemptAt"] is None


async def test_a_slow_receiver_delays_only_its_own_deliveries(http, urls, auth):
    async with receiving("127.0.0.1") as slow, receiving("127.0.0.2") as quick:
        slow.script("stuck", lambda call: Reply(500, delay_s=1.5))
        stuck = [await create(http, urls, auth, f"stuck {n} #sim:delay=0", webhook=slow.url("stuck")) for n in range(8)]
        await eventually("the slow receiver busy", lambda: slow.in_flight >= 4)
        created = await create(http, urls, auth, "quick #sim:delay=0", webhook=quick.url("quick"))
        await wait_for_status(http, urls.api, created["id"], auth)
        started = asyncio.get_running_loop().time()
        await eventually("the quick delivery", lambda: quick.to("quick"), timeout=10)
        waited = asyncio.get_running_loop().time() - started
        assert waited < 1.0, waited  # not behind the slow receiver's queue
        assert slow.most_in_flight <= 4  # one replica, one host: at most 4 at once
        assert len(stuck) == 8
