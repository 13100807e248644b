"""The persister of the test session, fed events straight through RabbitMQ: what it stores, where, and how it
ends each generation, for the CDN's good and bad answers and for duplicated, reordered and early events."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from common.storage import open_s3
from common.topology import QUEUE, event_message
from devstack.processes import free_port
from tests.helpers import ServiceLog, eventually, metric, metrics_of
from tests.persister_kit import (
    cdn_bytes,
    event_of,
    insert_generation,
    processing_event,
    publish,
    row,
    sim_prediction,
    sim_record,
    stored_objects,
    wait_row,
)


async def _persist(http, sim, db, broker, prompt: str, **kwargs):
    prediction = await sim_prediction(http, sim, prompt)
    gid = await insert_generation(db, prediction["id"])
    await publish(broker, event_of(prediction))
    record = await wait_row(db, gid, **kwargs)
    return prediction, gid, record


async def test_cdn_503_is_retried_then_the_exact_bytes_are_stored(http, sim, db, broker, settings, persister_port):
    before = await metrics_of(http, persister_port)

    prediction, gid, record = await _persist(http, sim, db, broker, "busy cdn #sim:cdnbusy=2")

    assert record["status"] == "succeeded", dict(record)
    assert (await sim_record(http, sim, prediction["id"]))["cdnRequests"] == 3
    key = f"generations/{gid}.png"
    assert record["output_key"] == key  # a key, not a URL: answers make the URLs they give out
    assert list(record["output_keys"]) == [key]
    assert record["completed_at"] is not None and record["error"] is None
    objects = await stored_objects(settings, gid)
    assert objects == {key: (await cdn_bytes(http, sim, prediction["id"]), "image/png")}
    after = await metrics_of(http, persister_port)
    assert metric(after, "studio_persister_retries_total") >= metric(before, "studio_persister_retries_total") + 2
    assert metric(after, "studio_persister_events_total", outcome="succeeded") >= 1
    assert metric(after, "studio_persister_stored_bytes_total") >= len(objects[key][0])
    assert metric(after, "studio_persister_persist_seconds_count") >= 1
    assert "studio_persister_dead_letters_total" in after


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        pytest.param("gone already #sim:cdngone", "expired or missing at the CDN (HTTP 404)", id="cdn-404"),
        pytest.param(
            "elsewhere #sim:redirect=evil.example.com",
            "output host not allowed: evil.example.com",
            id="redirect-to-a-disallowed-host",
        ),
        # 60 MiB against the default 50 MiB cap, without a Content-Length: only counting while streaming catches it.
        pytest.param("huge #sim:size=62914560 #sim:chunked", "output larger than 52428800 bytes", id="60-mib-output"),
        pytest.param("html #sim:notimage", "not a PNG, JPEG, WebP or GIF image", id="not-an-image"),
    ],
)
async def test_permanent_failures_end_failed_with_the_reason_and_store_nothing(
    http, sim, db, broker, settings, prompt, reason
):
    _, gid, record = await _persist(http, sim, db, broker, prompt, timeout=120)

    assert record["status"] == "failed"
    assert reason in record["error"]
    assert record["output_key"] is None and list(record["output_keys"]) == []
    assert record["completed_at"] is not None
    assert await stored_objects(settings, gid) == {}


async def test_several_outputs_are_stored_under_numbered_keys(http, sim, db, broker, settings):
    prediction, gid, record = await _persist(http, sim, db, broker, "triptych #sim:outputs=3")

    assert record["status"] == "succeeded"
    keys = [f"generations/{gid}.png", f"generations/{gid}-1.png", f"generations/{gid}-2.png"]
    assert list(record["output_keys"]) == keys
    assert record["output_key"] == keys[0]
    objects = await stored_objects(settings, gid)
    assert sorted(objects) == sorted(keys)
    for n, key in enumerate(keys):
        assert objects[key] == (await cdn_bytes(http, sim, prediction["id"], n), "image/png")


async def test_duplicates_and_a_late_started_change_nothing(http, sim, db, broker, settings, persister_port):
    prediction = await sim_prediction(http, sim, "echo")
    gid = await insert_generation(db, prediction["id"])
    await publish(broker, event_of(prediction), times=3)
    first = await wait_row(db, gid)
    assert first["status"] == "succeeded"
    duplicates = metric(await metrics_of(http, persister_port), "studio_persister_events_total", outcome="duplicate")

    # `started` after `succeeded`, a `failed` for the same prediction, and the completion once more.
    await publish(broker, processing_event(prediction["id"]))
    failed = dict(prediction, status="failed", error="late failure", output=None)
    await publish(broker, event_of(failed))
    await publish(broker, event_of(prediction))

    async def settled() -> bool:
        text = await metrics_of(http, persister_port)
        return metric(text, "studio_persister_events_total", outcome="duplicate") >= duplicates + 3

    await eventually("three more duplicates", settled)
    last = await row(db, gid)
    for column in ("status", "output_key", "output_keys", "error", "completed_at"):
        assert last[column] == first[column], column
    assert list(await stored_objects(settings, gid)) == [f"generations/{gid}.png"]


async def test_started_moves_queued_to_processing(db, broker):
    pid = f"pred_{uuid.uuid4().hex}"
    gid = await insert_generation(db, pid)
    await publish(broker, processing_event(pid))

    record = await wait_row(db, gid, statuses=("processing",))

    assert record["completed_at"] is None and record["output_key"] is None


async def test_failed_prediction_keeps_skytells_message(http, sim, db, broker):
    _, _, record = await _persist(http, sim, db, broker, "doomed #sim:fail")

    assert record["status"] == "failed"
    assert record["error"] == "Simulated failure: the model could not generate this image"


async def test_callback_before_the_api_wrote_the_prediction_id_is_retried(
    http, sim, db, broker, settings, persister_port
):
    prediction = await sim_prediction(http, sim, "early bird")
    gid = await insert_generation(db, None)  # the API has not stored Skytells' id yet
    retries = metric(await metrics_of(http, persister_port), "studio_persister_retries_total")
    await publish(broker, event_of(prediction))

    async def retried() -> bool:
        text = await metrics_of(http, persister_port)
        return metric(text, "studio_persister_retries_total") >= retries + 2

    await eventually("two retries of the unknown prediction", retried)
    await asyncio.sleep(1)
    assert (await row(db, gid))["status"] == "queued"
    await db.execute("UPDATE generations SET prediction_id = $2 WHERE id = $1", gid, prediction["id"])

    record = await wait_row(db, gid)
    assert record["status"] == "succeeded"
    objects = await stored_objects(settings, gid)
    assert objects[f"generations/{gid}.png"][0] == await cdn_bytes(http, sim, prediction["id"])


@pytest.mark.parametrize("attempt", [2, 1], ids=["its retry", "a fresh duplicate"])
async def test_an_event_keeps_what_an_earlier_one_stored_even_after_the_cdn_expired(
    http, sim, db, broker, settings, attempt
):
    # An earlier attempt stored the output, then the database failed; by the next event (its retry, or the same
    # outcome as a new message: a duplicate callback, the reconciler's) the CDN has deleted it.
    prediction = await sim_prediction(http, sim, f"stored before the outage {attempt} #sim:cdngone")
    gid = await insert_generation(db, prediction["id"])
    earlier = b"\x89PNG\r\n\x1a\n" + b"stored by attempt one"
    async with open_s3(settings) as s3:
        await s3.put_object(Bucket=settings.s3_bucket, Key=f"generations/{gid}.png", Body=earlier)
    await broker.publish_to_queue(QUEUE, event_message(event_of(prediction), {"x-attempt": attempt}))

    record = await wait_row(db, gid)

    assert record["status"] == "succeeded", dict(record)
    assert record["output_key"] == f"generations/{gid}.png"
    assert (await stored_objects(settings, gid))[f"generations/{gid}.png"][0] == earlier
    assert (await sim_record(http, sim, prediction["id"]))["cdnRequests"] == 0


async def test_starts_without_the_skytells_key_with_the_reconciler_off(services):
    # SKYTELLS_API_KEY is required of the API only; the persister still consumes without it.
    port = free_port()
    env = {"PERSISTER_PORT": str(port), "SKYTELLS_API_KEY": ""}
    process = services.start_service("persister", env=env, label="persister-keyless")  # waits for /readyz
    try:
        assert "the reconciler is off" in process.log_path.read_text()
    finally:
        process.stop()


@pytest.mark.parametrize("ended", ["failed", "canceled"])
async def test_a_late_outcome_for_an_ended_generation_is_stored_and_its_status_kept(
    http, sim, db, broker, settings, services, persister_port, ended
):
    # Studio ended the generation (or its owner canceled it) before Skytells reported the image it made.
    prediction = await sim_prediction(http, sim, f"late outcome {ended}")
    gid = await insert_generation(db, prediction["id"], status=ended)
    log = ServiceLog(services, "persister")
    before = await metrics_of(http, persister_port)
    await publish(broker, event_of(prediction))

    async def attached():
        return (await row(db, gid))["output_key"]

    await eventually("the late output attached", attached, timeout=30)
    record = await row(db, gid)
    assert record["status"] == ended
    assert record["output_key"] == f"generations/{gid}.png"
    assert (await stored_objects(settings, gid))[f"generations/{gid}.png"][0] == await cdn_bytes(
        http, sim, prediction["id"]
    )

    # The counter is the process's (another test's redelivery may add to it): this generation's own line is
    # counted exactly, the counter only for having moved.
    def told() -> list[str]:
        return [line for line in log.lines() if "late outcome stored" in line and str(gid) in line]

    await eventually("the late outcome logged", told, timeout=10)
    assert len(told()) == 1, told()
    after = await metrics_of(http, persister_port)
    late = "studio_persister_late_outcomes_total"
    assert metric(after, late) >= metric(before, late) + 1
