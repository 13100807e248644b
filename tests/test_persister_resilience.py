"""Outages, crashes and races, on infrastructure of this module's own (`dedicated_stack.py`: PostgreSQL, RabbitMQ
and S3 server on free ports, with their own persister processes), so halting a server never disturbs another test.

The persisters here retry fast (RETRY_BASE_S 0.3, RETRY_MAX_S 2, 8 attempts) and fit download retries in a
5-second window, so the schedules play out within seconds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from common.broker import Broker
from common.db.generations import UNANSWERED_ERROR
from common.references import callback_url
from common.storage import ensure_bucket, open_s3
from devstack.processes import http_ok
from devstack.stack import Stack
from tests.dedicated_stack import dedicated_stack, more_unknown, persister_port_of, start_replica, wait_retries
from tests.helpers import eventually, metric, metrics_of
from tests.persister_kit import (
    cdn_bytes,
    dead_messages,
    event_of,
    insert_generation,
    publish,
    row,
    sim_prediction,
    sim_record,
    stored_objects,
    wait_row,
)


@pytest.fixture(scope="module")
def dedicated(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with dedicated_stack(stack, tmp_path_factory.mktemp("dedicated")) as own:
        yield own


@pytest.fixture(scope="module")
async def dedicated_broker(dedicated: Stack) -> AsyncIterator[Broker]:
    broker = await Broker.connect(dedicated.settings.amqp_url)
    yield broker
    await broker.close()


@pytest.fixture
async def dedicated_db(dedicated: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dedicated.settings.database_url)
    yield conn
    if not conn.is_closed():
        await conn.close()


async def test_two_replicas_with_every_event_delivered_three_times(
    http, sim, dedicated, dedicated_broker, dedicated_db
):
    replica = start_replica(dedicated, "persister-b")
    try:
        ports = [persister_port_of(dedicated), replica.env["PERSISTER_PORT"]]
        before = [await metrics_of(http, p) for p in ports]
        predictions = [await sim_prediction(http, sim, f"crowd {n}") for n in range(8)]
        gids = [await insert_generation(dedicated_db, p["id"]) for p in predictions]
        for prediction in predictions:
            await publish(dedicated_broker, event_of(prediction), times=3)

        records = [await wait_row(dedicated_db, gid) for gid in gids]

        assert [r["status"] for r in records] == ["succeeded"] * 8
        for prediction, gid in zip(predictions, gids, strict=True):
            objects = await stored_objects(dedicated.settings, gid)
            assert objects == {f"generations/{gid}.png": (await cdn_bytes(http, sim, prediction["id"]), "image/png")}

        async def all_handled() -> bool:
            after = [await metrics_of(http, p) for p in ports]
            handled = sum(
                metric(a, "studio_persister_events_total", outcome=o)
                - metric(b, "studio_persister_events_total", outcome=o)
                for a, b in zip(after, before, strict=True)
                for o in ("succeeded", "duplicate")
            )
            return handled >= 24

        await eventually("all 24 deliveries handled", all_handled)
        after = [await metrics_of(http, p) for p in ports]
        won = sum(
            metric(a, "studio_persister_events_total", outcome="succeeded")
            - metric(b, "studio_persister_events_total", outcome="succeeded")
            for a, b in zip(after, before, strict=True)
        )
        assert won == 8  # one terminal write per generation, whichever replica made it
    finally:
        replica.stop()


async def test_storage_down_keeps_the_outputs_in_the_spool_across_a_restart(
    http, sim, dedicated, dedicated_broker, dedicated_db
):
    # Skytells deletes an output minutes after completion; storage may be down for longer. The output is
    # downloaded once into the persister's spool and put from there, by the next process if this one dies.
    assert dedicated.s3 is not None
    port = persister_port_of(dedicated)
    prediction = await sim_prediction(http, sim, "during an S3 outage")
    gid = await insert_generation(dedicated_db, prediction["id"])
    retries = metric(await metrics_of(http, port), "studio_persister_retries_total")
    dedicated.s3.halt()
    try:
        await publish(dedicated_broker, event_of(prediction))

        async def spooled() -> bool:
            return metric(await metrics_of(http, port), "studio_persister_spool_entries") == 1

        await eventually("the outputs spooled", spooled)
        ready = await http.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 503 and "storage" in ready.json()["failing"]
        assert (await row(dedicated_db, gid))["status"] == "queued"
        assert metric(await metrics_of(http, port), "studio_persister_retries_total") == retries  # no retry needed
        dedicated.processes["persister-a"].kill()
    finally:
        dedicated.s3.resume()
        async with open_s3(dedicated.settings) as s3:  # moto starts empty after a restart
            await ensure_bucket(s3, dedicated.settings.s3_bucket, dedicated.settings.s3_output_access)
    dedicated.start_service("persister", label="persister-a")

    record = await wait_row(dedicated_db, gid)

    assert record["status"] == "succeeded"
    assert (await sim_record(http, sim, prediction["id"]))["cdnRequests"] == 1  # put from the spool, not fetched again
    objects = await stored_objects(dedicated.settings, gid)
    assert objects[f"generations/{gid}.png"][0] == await cdn_bytes(http, sim, prediction["id"])
    assert metric(await metrics_of(http, port), "studio_persister_spool_entries") == 0


async def test_postgres_unavailable_for_a_while(http, sim, dedicated, dedicated_broker, dedicated_db):
    assert dedicated.postgres is not None
    port = persister_port_of(dedicated)
    prediction = await sim_prediction(http, sim, "during a database outage")
    gid = await insert_generation(dedicated_db, prediction["id"])
    await dedicated_db.close()
    retries = metric(await metrics_of(http, port), "studio_persister_retries_total")
    dedicated.postgres.halt()
    try:
        await publish(dedicated_broker, event_of(prediction))
        await wait_retries(http, port, retries + 2)
        ready = await http.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 503 and "database" in ready.json()["failing"]
    finally:
        dedicated.postgres.resume()

    conn = await asyncpg.connect(dedicated.settings.database_url)
    try:
        record = await wait_row(conn, gid)
    finally:
        await conn.close()
    assert record["status"] == "succeeded"
    objects = await stored_objects(dedicated.settings, gid)
    assert objects[f"generations/{gid}.png"][0] == await cdn_bytes(http, sim, prediction["id"])


async def test_rabbitmq_restart_under_load_loses_no_event(http, sim, dedicated, dedicated_broker, dedicated_db):
    assert dedicated.rabbitmq is not None
    # Each output needs a second attempt, so during the restart events sit in the main and the delay queues.
    predictions = await asyncio.gather(*(sim_prediction(http, sim, f"storm {n} #sim:cdnbusy=1") for n in range(24)))
    gids = [await insert_generation(dedicated_db, p["id"]) for p in predictions]
    for prediction in predictions:
        await publish(dedicated_broker, event_of(prediction))
    dedicated.rabbitmq.halt()
    dedicated.rabbitmq.resume()

    records = [await wait_row(dedicated_db, gid, timeout=90) for gid in gids]

    assert [r["status"] for r in records] == ["succeeded"] * 24
    for gid in gids:
        assert list(await stored_objects(dedicated.settings, gid)) == [f"generations/{gid}.png"]

    # Consumption resumed by itself, and the persister says so: a new event is processed, /readyz is 200.
    late = await sim_prediction(http, sim, "after the storm")
    late_gid = await insert_generation(dedicated_db, late["id"])
    await publish(dedicated_broker, event_of(late))
    assert (await wait_row(dedicated_db, late_gid))["status"] == "succeeded"
    ready = await http.get(f"http://127.0.0.1:{persister_port_of(dedicated)}/readyz")
    assert ready.status_code == 200, ready.text


async def test_dead_letter_after_the_last_attempt_then_redrive(http, sim, dedicated, dedicated_broker, dedicated_db):
    port = persister_port_of(dedicated)
    dead_before = metric(await metrics_of(http, port), "studio_persister_dead_letters_total")
    prediction = await sim_prediction(http, sim, "orphan")
    event = event_of(prediction)
    await publish(dedicated_broker, event)  # no generation has this prediction id, and none will for a while

    async def dead_lettered() -> bool:
        bodies = await dead_messages(dedicated_broker)
        return any(json.loads(b)["eventId"] == event.event_id for b in bodies)

    await eventually("the event in studio.persister.dead", dead_lettered, interval=0.5)
    text = await metrics_of(http, port)
    assert metric(text, "studio_persister_dead_letters_total") == dead_before + 1

    gid = await insert_generation(dedicated_db, prediction["id"])
    redrive = subprocess.run(
        [sys.executable, "-m", "services.persister", "redrive"],
        env=dedicated.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert redrive.returncode == 0, redrive.stdout + redrive.stderr
    assert "moved 1 dead messages" in redrive.stdout

    record = await wait_row(dedicated_db, gid)
    assert record["status"] == "succeeded"
    assert not await dead_lettered()


async def _streaming(http, sim, dedicated_broker, dedicated_db, prompt: str):
    """Publish a slow output's event and return once the persister is downloading it."""
    prediction = await sim_prediction(http, sim, prompt)
    gid = await insert_generation(dedicated_db, prediction["id"])
    await publish(dedicated_broker, event_of(prediction))

    async def started() -> bool:
        return (await sim_record(http, sim, prediction["id"]))["cdnRequests"] >= 1

    await eventually("the download to start", started, interval=0.05)
    return prediction, gid


async def test_sigkill_while_streaming_loses_nothing(http, sim, dedicated, dedicated_broker, dedicated_db):
    prediction, gid = await _streaming(
        http, sim, dedicated_broker, dedicated_db, "interrupted #sim:size=8000000 #sim:cdnslow=3"
    )
    dedicated.processes["persister-a"].kill()
    assert (await row(dedicated_db, gid))["status"] == "queued"
    assert await stored_objects(dedicated.settings, gid) == {}

    dedicated.start_service("persister", label="persister-a")
    record = await wait_row(dedicated_db, gid)

    assert record["status"] == "succeeded"
    objects = await stored_objects(dedicated.settings, gid)
    assert objects == {f"generations/{gid}.png": (await cdn_bytes(http, sim, prediction["id"]), "image/png")}


async def test_sigterm_finishes_the_message_in_hand_then_exits(http, sim, dedicated, dedicated_broker, dedicated_db):
    prediction, gid = await _streaming(
        http, sim, dedicated_broker, dedicated_db, "last one out #sim:size=4000000 #sim:cdnslow=2"
    )
    process = dedicated.processes["persister-a"]
    process.signal(signal.SIGTERM)
    assert process.popen is not None
    code = await asyncio.to_thread(process.popen.wait, 40)

    assert code == 0, process.tail()
    record = await row(dedicated_db, gid)
    assert record["status"] == "succeeded"  # finished before exiting, not abandoned
    assert list(await stored_objects(dedicated.settings, gid)) == [f"generations/{gid}.png"]
    dedicated.start_service("persister", label="persister-a")
    assert http_ok(f"http://127.0.0.1:{persister_port_of(dedicated)}/readyz")


async def test_reconciler_recovers_lost_callbacks_under_one_lock(http, sim, dedicated, dedicated_broker, dedicated_db):
    lost = await sim_prediction(http, sim, "no callback ever #sim:ratelimit=2", fetch=False)
    lost_gid = await insert_generation(dedicated_db, lost["id"], age_s=5)
    ancient_gid = await insert_generation(dedicated_db, f"pred_gone_{uuid.uuid4().hex}", age_s=7200)
    recent_gid = await insert_generation(dedicated_db, f"pred_gone_{uuid.uuid4().hex}", age_s=600)
    # Rows without a prediction id (an API crash, a create call answered by a cut): found in Skytells' list by the
    # reference in their callback URL, they go on; only one not found for RECONCILE_UNKNOWN_AFTER_S ends.
    unsubmitted_gid = await insert_generation(
        dedicated_db, None, age_s=dedicated.settings.reconcile_unknown_after_s + 1
    )
    in_flight_gid = await insert_generation(dedicated_db, None, age_s=5)
    found_gid = await insert_generation(dedicated_db, None, age_s=5)
    settings = dedicated.settings
    unrecorded = await http.post(
        f"{sim}/v1/predictions",
        headers={"x-api-key": "sim-key"},
        json={
            "model": "truefusion-pro",
            "input": {"prompt": "its answer and its callbacks were lost #sim:delay=0.05 #sim:drop"},
            "webhook": {
                "url": callback_url(settings.public_webhook_url, found_gid, settings.skytells_webhook_secrets[0]),
                "events": ["completed"],
            },
        },
    )
    assert unrecorded.status_code == 201, unrecorded.text
    # Another replica holds the reconciler's lock: this one must not reconcile meanwhile.
    holder = await asyncpg.connect(dedicated.settings.database_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock(hashtextextended('studio.persister.reconciler', 0))")
        reconciler = start_replica(
            dedicated, "persister-r", RECONCILE_AFTER_S="1", RECONCILE_INTERVAL_S="0.3", RETRY_BASE_S="0.3"
        )
        await asyncio.sleep(2)  # several intervals
        assert (await sim_record(http, sim, lost["id"]))["getRequests"] == 0
        assert (await row(dedicated_db, lost_gid))["status"] == "queued"
        assert (await row(dedicated_db, unsubmitted_gid))["status"] == "queued"
    finally:
        await holder.close()  # releases the lock
    try:
        record = await wait_row(dedicated_db, lost_gid)
        assert record["status"] == "succeeded"
        objects = await stored_objects(dedicated.settings, lost_gid)
        assert objects[f"generations/{lost_gid}.png"][0] == await cdn_bytes(http, sim, lost["id"])
        assert (await sim_record(http, sim, lost["id"]))["getRequests"] >= 3  # two 429s honoured, then the answer

        ancient = await wait_row(dedicated_db, ancient_gid)
        assert ancient["status"] == "failed" and "does not know prediction" in ancient["error"]
        text = await metrics_of(http, reconciler.env["PERSISTER_PORT"])
        passes = metric(text, "studio_persister_reconciled_total", result="unknown")
        await eventually(
            "another reconciliation pass",
            lambda: more_unknown(http, reconciler.env["PERSISTER_PORT"], passes),
        )
        assert (await row(dedicated_db, recent_gid))["status"] == "queued"  # unknown for less than an hour: not yet
        unsubmitted = await row(dedicated_db, unsubmitted_gid)
        assert (unsubmitted["status"], unsubmitted["error"]) == ("failed", UNANSWERED_ERROR)
        assert (await row(dedicated_db, in_flight_gid))["status"] == "queued"  # not found, but not for long yet
        found = await wait_row(dedicated_db, found_gid)
        assert (found["status"], found["prediction_id"]) == ("succeeded", unrecorded.json()["id"])
        objects = await stored_objects(dedicated.settings, found_gid)
        assert objects[f"generations/{found_gid}.png"][0] == await cdn_bytes(http, sim, unrecorded.json()["id"])
        assert metric(text, "studio_persister_reconciled_total", result="unsubmitted_failed") >= 1
    finally:
        reconciler.stop()
