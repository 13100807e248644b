"""Deliveries are written by the statement that makes the change, whichever process runs it: each transition
of the generations table records what its filter asks for, once, and nothing for a create that was refused."""

from __future__ import annotations

import json
import uuid

from common.db import generations, reconciliation
from common.predictions import Status

HOOK = "https://receiver.invalid/hook"  # never resolves: whatever a notifier tries, it stays pending


async def _generation(db, user_id: str, events: list[str], *, age_s: float = 0, prediction: bool = True) -> uuid.UUID:
    generation_id = uuid.uuid4()
    await db.execute(
        """
        INSERT INTO generations (id, user_id, prediction_id, model, prompt, webhook, webhook_events, created_at)
        VALUES ($1, $2, $3, 'truefusion-pro', 'p', $4, $5, now() - make_interval(secs => $6))
        """,
        generation_id,
        user_id,
        f"pred-{generation_id}" if prediction else None,
        HOOK,
        events,
        age_s,
    )
    return generation_id


async def _deliveries(db, generation_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT event, status FROM webhook_deliveries WHERE generation_id = $1 ORDER BY created_at, event DESC",
        generation_id,
    )
    return [(row["event"], row["status"]) for row in rows]


async def test_each_transition_records_what_the_filter_asks_for_once(db, user_id):
    generation_id = await _generation(db, user_id, ["start", "completed"])

    assert await generations.mark_processing(db, generation_id) is not None
    assert await generations.set_prediction(db, generation_id, f"pred-{generation_id}", Status.PROCESSING)
    assert await _deliveries(db, generation_id) == [("start", "pending")]

    await generations.mark_succeeded(db, generation_id, [f"generations/{generation_id}.png"])
    assert await generations.mark_ended(db, generation_id, Status.FAILED, "late") is None  # terminal stays
    # The start nobody got yet is skipped: the receiver is told the outcome instead.
    assert await _deliveries(db, generation_id) == [("start", "skipped"), ("completed", "pending")]
    data = json.loads(
        await db.fetchval(
            "SELECT generation FROM webhook_deliveries WHERE generation_id = $1 AND event = 'completed'", generation_id
        )
    )
    assert data["status"] == "succeeded" and data["output_keys"] == [f"generations/{generation_id}.png"]


async def test_only_the_asked_events_are_recorded(db, user_id):
    completed_only = await _generation(db, user_id, ["completed"])
    await generations.mark_processing(db, completed_only)
    assert await _deliveries(db, completed_only) == []
    await generations.mark_ended(db, completed_only, Status.CANCELED, None)
    assert await _deliveries(db, completed_only) == [("completed", "pending")]

    no_webhook = uuid.uuid4()
    await db.execute(
        "INSERT INTO generations (id, user_id, model, prompt) VALUES ($1, $2, 'truefusion-pro', 'p')",
        no_webhook,
        user_id,
    )
    await generations.mark_ended(db, no_webhook, Status.CANCELED, None)
    assert await _deliveries(db, no_webhook) == []


async def test_the_reconcilers_give_ups_record_their_deliveries(db, user_id):
    unknown = await _generation(db, user_id, ["completed"], age_s=7200)
    assert await reconciliation.mark_failed_if_created_before(db, unknown, "never found", 3600) is not None
    assert await _deliveries(db, unknown) == [("completed", "pending")]

    # A create that timed out was answered 503, and a repeat with its key returned it: its client may wait.
    timed_out = await _generation(db, user_id, ["completed"], age_s=7200, prediction=False)
    await db.execute("UPDATE generations SET submit_timed_out_at = now() WHERE id = $1", timed_out)
    # One whose API request died before any answer was never given to anyone: a repeat made a new one.
    unanswered = await _generation(db, user_id, ["completed"], age_s=7200, prediction=False)
    expired = await generations.expire_unsubmitted(db, 600, among=[timed_out, unanswered])
    assert {g.status for g in expired} == {Status.FAILED} and len(expired) == 2
    assert await _deliveries(db, timed_out) == [("completed", "pending")]
    assert await _deliveries(db, unanswered) == []


async def test_a_refused_create_tells_no_one(db, user_id):
    generation_id = await _generation(db, user_id, ["completed"], prediction=False)
    assert await generations.fail_submission(db, generation_id, "Skytells said no") is not None
    assert await _deliveries(db, generation_id) == []


async def test_a_rolled_back_change_leaves_no_delivery(db, user_id):
    generation_id = await _generation(db, user_id, ["completed"])
    transaction = db.transaction()
    await transaction.start()
    await generations.mark_ended(db, generation_id, Status.CANCELED, None)
    await transaction.rollback()
    assert await _deliveries(db, generation_id) == []
    assert await db.fetchval("SELECT status FROM generations WHERE id = $1", generation_id) == "queued"


async def test_deleting_a_generation_drops_its_deliveries(db, user_id):
    generation_id = await _generation(db, user_id, ["completed"])
    await generations.mark_ended(db, generation_id, Status.CANCELED, None)
    await db.execute("DELETE FROM generations WHERE id = $1", generation_id)
    assert await _deliveries(db, generation_id) == []
