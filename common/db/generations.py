"""The `generations` table: SQL as named constants and typed functions over them.

Functions never commit: the caller owns the transaction. Every state change is a conditional UPDATE whose
WHERE clause encodes the state machine, so concurrent or repeated deliveries cannot move a terminal
generation or regress one, whatever the interleaving. Each change a client may have asked to be told of
(`processing`, terminal) records its webhook deliveries in the same statement (`outbox.recorded`); a create
that Skytells refused (`FAIL_SUBMISSION`) was never accepted, so it tells no one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from common.db.outbox import recorded
from common.predictions import Status


@dataclass(frozen=True)
class Generation:
    id: uuid.UUID
    user_id: str
    prediction_id: str | None
    model: str
    prompt: str
    status: Status
    output_key: str | None  # the first of `output_keys`: object keys in S3_BUCKET, never URLs
    output_keys: tuple[str, ...]
    error: str | None
    idempotency_key: str | None
    request_hash: str | None
    request_id: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    submit_timed_out_at: datetime | None
    checked_at: datetime | None
    input: dict[str, Any] = field(default_factory=dict)
    predict_time: float | None = None
    credits_used: float | None = None
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> Generation:
        values = {name: record[name] for name in _FIELDS}
        values["output_keys"] = tuple(values["output_keys"] or ())
        values["webhook_events"] = tuple(values["webhook_events"] or ())
        values["status"] = Status(values["status"])
        if isinstance(values["input"], str):  # read without the pool's JSON codec
            values["input"] = json.loads(values["input"])
        if values["credits_used"] is not None:  # numeric (exact sums in usage) arrives as a Decimal
            values["credits_used"] = float(values["credits_used"])
        return cls(**values)


# Looked up once: `fields()` walks the class's dataclass fields on every call.
_FIELDS = tuple(field.name for field in fields(Generation))


def _one(record: asyncpg.Record | None) -> Generation | None:
    return None if record is None else Generation.from_record(record)


LOCK_USER = "SELECT pg_advisory_xact_lock(hashtextextended('studio.quota:' || $1, 0))"

# The current UTC month of `usage_months`.
_MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"

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
    SELECT user_id, {_MONTH}, 1 FROM created
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

GET_FOR_USER = "SELECT * FROM generations WHERE id = $1 AND user_id = $2"
EXISTS = "SELECT EXISTS (SELECT 1 FROM generations WHERE id = $1)"
GET_BY_IDEMPOTENCY_KEY = "SELECT * FROM generations WHERE user_id = $1 AND idempotency_key = $2"
GET_BY_PREDICTION_ID = "SELECT * FROM generations WHERE prediction_id = $1"

# The callback may have bound the same prediction first (found by Studio's id); another one never replaces it.
SET_PREDICTION = recorded(
    """
UPDATE generations
SET prediction_id = $2,
    status = CASE WHEN $3::text = 'processing' AND status = 'queued' THEN 'processing' ELSE status END,
    updated_at = now()
WHERE id = $1 AND (prediction_id IS NULL OR prediction_id = $2)
RETURNING *
"""
)

# A callback for a prediction no generation has, carrying Studio's generation id: bind it to that generation
# only if it has no prediction yet (whatever its status: a prediction belongs to exactly one generation).
BIND_PREDICTION = """
UPDATE generations SET prediction_id = $2, updated_at = now()
WHERE id = $1 AND prediction_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM generations WHERE prediction_id = $2)
RETURNING *
"""

MARK_PROCESSING = recorded(
    """
UPDATE generations SET status = 'processing', updated_at = now()
WHERE id = $1 AND status = 'queued'
RETURNING *
"""
)

# Skytells' metrics ($4, $5) when this event carried them, else those an earlier event recorded; the month's
# usage counts the success, its images and its credits in the same statement.
MARK_SUCCEEDED = recorded(
    """
UPDATE generations
SET status = 'succeeded', output_key = $2, output_keys = $3, error = NULL,
    predict_time = COALESCE($4, predict_time), credits_used = COALESCE($5, credits_used),
    completed_at = now(), updated_at = now()
WHERE id = $1 AND status IN ('queued', 'processing')
RETURNING *
""",
    also=f"""
counted AS (
    INSERT INTO usage_months AS u (user_id, month, succeeded, images, credits_used)
    SELECT user_id, {_MONTH}, 1, cardinality(output_keys), COALESCE(credits_used, 0) FROM changed
    ON CONFLICT (user_id, month) DO UPDATE
    SET succeeded = u.succeeded + 1, images = u.images + EXCLUDED.images,
        credits_used = u.credits_used + EXCLUDED.credits_used
)""",
)

# What Skytells reported of a prediction whose outputs went to the spool: kept until they are stored.
SET_METRICS = """
UPDATE generations SET predict_time = COALESCE($2, predict_time), credits_used = COALESCE($3, credits_used)
WHERE id = $1 AND status IN ('queued', 'processing')
"""

# Outputs Skytells reported for a generation that had already ended without any (Studio failed it, or it was
# canceled while Skytells finished): kept with the row, whose terminal status never changes.
# Paid images all the same: the month's usage counts them and their credits (not as a success).
ATTACH_LATE_OUTPUTS = f"""
WITH attached AS (
    UPDATE generations SET output_key = $2, output_keys = $3,
        predict_time = COALESCE($4, predict_time), credits_used = COALESCE($5, credits_used), updated_at = now()
    WHERE id = $1 AND status IN ('failed', 'canceled') AND output_key IS NULL
    RETURNING *
), counted AS (
    INSERT INTO usage_months AS u (user_id, month, images, credits_used)
    SELECT user_id, {_MONTH}, cardinality(output_keys), COALESCE(credits_used, 0) FROM attached
    ON CONFLICT (user_id, month) DO UPDATE
    SET images = u.images + EXCLUDED.images, credits_used = u.credits_used + EXCLUDED.credits_used
)
SELECT * FROM attached
"""

MARK_ENDED = recorded(
    """
UPDATE generations
SET status = $2, error = $3, completed_at = now(), updated_at = now()
WHERE id = $1 AND status IN ('queued', 'processing')
RETURNING *
"""
)

# Only a finished generation is deleted: one still running would get its outcome written to nothing. Its pending
# webhook deliveries go with it (their foreign key cascades).
DELETE_FINISHED = """
DELETE FROM generations
WHERE id = $1 AND user_id = $2 AND status IN ('succeeded', 'failed', 'canceled')
RETURNING id
"""

LIST_FOR_USER = """
SELECT * FROM generations
WHERE user_id = $1
  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2::timestamptz, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4
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
    return _one(await conn.fetchrow(MARK_SUBMIT_TIMED_OUT, generation_id))


async def fail_submission(conn: asyncpg.Connection, generation_id: uuid.UUID, error: str) -> Generation | None:
    """Skytells refused the create call: `failed`, quota slot and Idempotency-Key released."""
    return _one(await conn.fetchrow(FAIL_SUBMISSION, generation_id, error))


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
    return _one(record)


async def get_for_user(conn: asyncpg.Connection, generation_id: uuid.UUID, user_id: str) -> Generation | None:
    return _one(await conn.fetchrow(GET_FOR_USER, generation_id, user_id))


async def exists(conn: asyncpg.Connection, generation_id: uuid.UUID) -> bool:
    found: bool = await conn.fetchval(EXISTS, generation_id)
    return found


async def get_by_idempotency_key(conn: asyncpg.Connection, user_id: str, key: str) -> Generation | None:
    return _one(await conn.fetchrow(GET_BY_IDEMPOTENCY_KEY, user_id, key))


async def get_by_prediction_id(conn: asyncpg.Connection, prediction_id: str) -> Generation | None:
    return _one(await conn.fetchrow(GET_BY_PREDICTION_ID, prediction_id))


async def set_prediction(
    conn: asyncpg.Connection, generation_id: uuid.UUID, prediction_id: str, status: Status
) -> Generation | None:
    return _one(await conn.fetchrow(SET_PREDICTION, generation_id, prediction_id, status))


async def bind_prediction(conn: asyncpg.Connection, generation_id: uuid.UUID, prediction_id: str) -> Generation | None:
    """Give a generation without a prediction id this one; None when it has one, or another row has this one."""
    try:
        return _one(await conn.fetchrow(BIND_PREDICTION, generation_id, prediction_id))
    except asyncpg.UniqueViolationError:  # bound elsewhere between the check and the write
        return None


async def mark_processing(conn: asyncpg.Connection, generation_id: uuid.UUID) -> Generation | None:
    """queued -> processing; None when the row was not queued (already further along, or terminal)."""
    return _one(await conn.fetchrow(MARK_PROCESSING, generation_id))


@dataclass(frozen=True)
class Metrics:
    """What Skytells reported of a prediction: `metrics.predict_time`, `metadata.billing.credits_used`."""

    predict_time: float | None = None
    credits_used: float | None = None


NO_METRICS = Metrics()


async def mark_succeeded(
    conn: asyncpg.Connection, generation_id: uuid.UUID, output_keys: list[str], metrics: Metrics = NO_METRICS
) -> Generation | None:
    """Terminal success in one statement, counted in the month's usage; None when it had already ended."""
    first = output_keys[0] if output_keys else None
    return _one(
        await conn.fetchrow(MARK_SUCCEEDED, generation_id, first, output_keys, metrics.predict_time, _credits(metrics))
    )


async def set_metrics(conn: asyncpg.Connection, generation_id: uuid.UUID, metrics: Metrics) -> None:
    await conn.execute(SET_METRICS, generation_id, metrics.predict_time, _credits(metrics))


async def attach_late_outputs(
    conn: asyncpg.Connection, generation_id: uuid.UUID, output_keys: list[str], metrics: Metrics = NO_METRICS
) -> Generation | None:
    """Record outputs stored after the generation ended; None when it has some already (or never ended)."""
    return _one(
        await conn.fetchrow(
            ATTACH_LATE_OUTPUTS, generation_id, output_keys[0], output_keys, metrics.predict_time, _credits(metrics)
        )
    )


def _credits(metrics: Metrics) -> Decimal | None:
    # Through its shortest decimal spelling, so 0.03 is summed as 0.03, not as the binary float nearest to it.
    return None if metrics.credits_used is None else Decimal(repr(metrics.credits_used))


async def mark_ended(
    conn: asyncpg.Connection, generation_id: uuid.UUID, status: Status, error: str | None
) -> Generation | None:
    """Terminal `failed` or `canceled`; None when the generation had already ended."""
    if status not in (Status.FAILED, Status.CANCELED):
        raise ValueError(f"not an unsuccessful terminal status: {status}")
    return _one(await conn.fetchrow(MARK_ENDED, generation_id, status, error))


async def list_for_user(
    conn: asyncpg.Connection,
    user_id: str,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[Generation]:
    created_at, gid = before if before is not None else (None, None)
    rows = await conn.fetch(LIST_FOR_USER, user_id, created_at, gid, limit)
    return [Generation.from_record(row) for row in rows]


async def delete_finished(conn: asyncpg.Connection, generation_id: uuid.UUID, user_id: str) -> bool:
    """Delete the user's finished generation; False when there was none (gone already, or unfinished)."""
    return await conn.fetchval(DELETE_FINISHED, generation_id, user_id) is not None
