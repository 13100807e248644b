"""The `generations` table: SQL as named constants and typed functions over them.

Functions never commit: the caller owns the transaction. Every state change is a conditional UPDATE whose
WHERE clause encodes the state machine, so concurrent or repeated deliveries cannot move a terminal
generation or regress one, whatever the interleaving. Each change a client may have asked to be told of
(`processing`, terminal) records its webhook deliveries in the same statement (`outbox.recorded`); a create
that Skytells refused (`FAIL_SUBMISSION`) was never accepted, so it tells no one.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, fields
from datetime import datetime

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
    output_url: str | None
    output_urls: tuple[str, ...]
    error: str | None
    idempotency_key: str | None
    request_hash: str | None
    request_id: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    submit_timed_out_at: datetime | None
    checked_at: datetime | None
    webhook: str | None
    webhook_events: tuple[str, ...]

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> Generation:
        values = {name: record[name] for name in _FIELDS}
        values["output_urls"] = tuple(values["output_urls"] or ())
        values["webhook_events"] = tuple(values["webhook_events"] or ())
        values["status"] = Status(values["status"])
        return cls(**values)


# Looked up once: `fields()` walks the class's dataclass fields on every call (a quarter of `from_record`).
_FIELDS = tuple(field.name for field in fields(Generation))


def _one(record: asyncpg.Record | None) -> Generation | None:
    return None if record is None else Generation.from_record(record)


LOCK_USER = "SELECT pg_advisory_xact_lock(hashtextextended('studio.quota:' || $1, 0))"

# Runs after LOCK_USER in the same transaction, so the count sees every committed row of this user.
INSERT_WITHIN_QUOTA = """
INSERT INTO generations (id, user_id, model, prompt, idempotency_key, request_hash, request_id, webhook,
                         webhook_events)
SELECT $1, $2, $3, $4, $5, $6, $7, $9, $10
WHERE (SELECT count(*) FROM generations
       WHERE user_id = $2 AND status IN ('queued', 'processing')) < $8
RETURNING *
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

MARK_SUCCEEDED = recorded(
    """
UPDATE generations
SET status = 'succeeded', output_url = $2, output_urls = $3, error = NULL,
    completed_at = now(), updated_at = now()
WHERE id = $1 AND status IN ('queued', 'processing')
RETURNING *
"""
)

# Outputs Skytells reported for a generation that had already ended without any (Studio failed it, or it was
# canceled while Skytells finished): kept with the row, whose terminal status never changes.
ATTACH_LATE_OUTPUTS = """
UPDATE generations SET output_url = $2, output_urls = $3, updated_at = now()
WHERE id = $1 AND status IN ('failed', 'canceled') AND output_url IS NULL
RETURNING *
"""

MARK_ENDED = recorded(
    """
UPDATE generations
SET status = $2, error = $3, completed_at = now(), updated_at = now()
WHERE id = $1 AND status IN ('queued', 'processing')
RETURNING *
"""
)

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
        webhook,
        list(webhook_events),
    )
    return _one(record)


async def get_for_user(conn: asyncpg.Connection, generation_id: uuid.UUID, user_id: str) -> Generation | None:
    return _one(await conn.fetchrow(GET_FOR_USER, generation_id, user_id))


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


async def mark_succeeded(
    conn: asyncpg.Connection, generation_id: uuid.UUID, output_urls: list[str]
) -> Generation | None:
    """Terminal success in one statement; None when the generation had already ended."""
    first = output_urls[0] if output_urls else None
    return _one(await conn.fetchrow(MARK_SUCCEEDED, generation_id, first, output_urls))


async def attach_late_outputs(
    conn: asyncpg.Connection, generation_id: uuid.UUID, output_urls: list[str]
) -> Generation | None:
    """Record outputs stored after the generation ended; None when it has some already (or never ended)."""
    return _one(await conn.fetchrow(ATTACH_LATE_OUTPUTS, generation_id, output_urls[0], output_urls))


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
