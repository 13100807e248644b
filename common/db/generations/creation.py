"""Creating a generation: the per-user lock that makes quota and Idempotency-Key decisions atomic, the insert
within quota, and the ends of a create call that never reached Skytells (refused, timed out, lost)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from typing import Any

import asyncpg

from common.db.generations.record import Generation, one
from common.db.outbox import recorded
from common.db.usage import UTC_MONTH

LOCK_USER = "SELECT pg_advisory_xact_lock(hashtextextended('studio.quota:' || $1, 0))"

# Runs after LOCK_USER in the same transaction, so the count sees every committed row of this user. The month's
# usage counts the generation in the same statement.
INSERT_WITHIN_QUOTA = f"""
WITH created AS (
    INSERT INTO generations (id, user_id, model, prompt, idempotency_key, request_hash, request_id, input, webhook,
                             webhook_events)
    SELECT $1, $2, $3, $4, $5, $6, $7, $9::text::jsonb, $10, $11
    WHERE (SELECT count(*) FROM generations
           WHERE user_id = $2 AND status IN ('queued', 'processing')) < $8
    RETURNING *
), counted AS (
    INSERT INTO usage_months AS u (user_id, month, generations)
    SELECT user_id, {UTC_MONTH}, 1 FROM created
    ON CONFLICT (user_id, month) DO UPDATE SET generations = u.generations + 1
)
SELECT * FROM created
"""

# A generation still without a prediction id this long after it was written lost its API request (a crash
# around the create call): end it so it stops holding a quota slot, and free its key so a retry with the same
# Idempotency-Key makes a fresh attempt. A callback that still comes finds it by its id (and binds the
# prediction to it, so the prediction is never orphaned). One whose create call timed out ($3) waits as long as
# the reconciler waits for a prediction Skytells does not know: Skytells may well have made it.
# A generation with no prediction id that Skytells' list of predictions did not show within
# RECONCILE_UNKNOWN_AFTER_S: its create call never reached Skytells (or was lost with it), so it frees its quota
# and Idempotency-Key. (Found in time, the reconciler binds it instead.) Only one whose create call timed out
# tells its webhook: a repeat of that create returned it, so its client may know it and wait to hear of it; any
# other was never answered to anyone (its API request died first), and a repeat made a fresh generation.
EXPIRE_UNSUBMITTED = recorded(
    """
UPDATE generations
SET status = 'failed', error = $2, idempotency_key = NULL, completed_at = now(), updated_at = now()
WHERE prediction_id IS NULL AND status IN ('queued', 'processing')
  AND created_at < now() - make_interval(secs => $1::float8)
  AND ($3::uuid[] IS NULL OR id = ANY($3::uuid[]))
  AND ($4::text IS NULL OR user_id = $4::text)
RETURNING *
""",
    told_if="c.submit_timed_out_at IS NOT NULL",
)
UNANSWERED_ERROR = "Skytells never confirmed the prediction and it was not found there"

# The create call timed out at Studio's end: the generation stays `queued`, holding its Idempotency-Key, so a
# repeat returns it instead of paying for a second prediction.
MARK_SUBMIT_TIMED_OUT = """
UPDATE generations SET submit_timed_out_at = now(), updated_at = now()
WHERE id = $1 AND prediction_id IS NULL AND status IN ('queued', 'processing')
RETURNING *
"""

# Skytells refused the create call (or Studio could not record its answer): the generation ends `failed` and
# its Idempotency-Key is released, so only generations that reached Skytells are ever replayed and a retry after
# a 502/503 tries again. One whose prediction id did get written (a commit whose answer was lost) is left to
# that prediction's callbacks.
FAIL_SUBMISSION = """
UPDATE generations
SET status = 'failed', error = $2, idempotency_key = NULL, completed_at = now(), updated_at = now()
WHERE id = $1 AND status IN ('queued', 'processing') AND prediction_id IS NULL
RETURNING *
"""


async def lock_user(conn: asyncpg.Connection, user_id: str) -> None:
    """Serialise this user's quota and idempotency decisions until the transaction ends (re-entrant)."""
    if not conn.is_in_transaction():
        raise RuntimeError("the per-user lock needs a transaction")
    await conn.execute(LOCK_USER, user_id)


async def expire_unsubmitted(
    conn: asyncpg.Connection,
    older_than_s: float,
    *,
    user_id: str | None = None,
    among: Collection[uuid.UUID] | None = None,
) -> list[Generation]:
    """End the generations without a prediction id older than `older_than_s` (of one user, or among some)."""
    ids = None if among is None else list(among)
    rows = await conn.fetch(EXPIRE_UNSUBMITTED, older_than_s, UNANSWERED_ERROR, ids, user_id)
    return [Generation.from_record(row) for row in rows]


async def mark_submit_timed_out(conn: asyncpg.Connection, generation_id: uuid.UUID) -> Generation | None:
    return one(await conn.fetchrow(MARK_SUBMIT_TIMED_OUT, generation_id))


async def fail_submission(conn: asyncpg.Connection, generation_id: uuid.UUID, error: str) -> Generation | None:
    """Skytells refused the create call: `failed`, quota slot and Idempotency-Key released."""
    return one(await conn.fetchrow(FAIL_SUBMISSION, generation_id, error))


async def insert_within_quota(
    conn: asyncpg.Connection,
    *,
    user_id: str,
    model: str,
    prompt: str,
    max_active: int,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    request_id: str | None = None,
    model_input: dict[str, Any] | None = None,
    webhook: str | None = None,
    webhook_events: Collection[str] = (),
) -> Generation | None:
    """Insert a queued generation unless the user already has `max_active` unfinished ones (then None).

    Must run inside a transaction: the per-user advisory lock it takes is held until that transaction ends,
    which is what makes the count-then-insert atomic across connections and API replicas.
    """
    await lock_user(conn, user_id)
    record = await conn.fetchrow(
        INSERT_WITHIN_QUOTA,
        uuid.uuid4(),
        user_id,
        model,
        prompt,
        idempotency_key,
        request_hash,
        request_id,
        max_active,
        json.dumps(model_input or {}),  # as text: whichever codecs the connection has, it is the same JSON
        webhook,
        list(webhook_events),
    )
    return one(record)
