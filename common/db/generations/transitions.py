"""A generation's state changes once Skytells has its prediction: each a conditional UPDATE whose WHERE clause
encodes the state machine, and each that a client may have asked to be told of records its webhook deliveries
in the same statement (`outbox.recorded`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from common.db.generations.record import Generation, one
from common.db.outbox import recorded
from common.db.usage import UTC_MONTH
from common.predictions import Status

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
    SELECT user_id, {UTC_MONTH}, 1, cardinality(output_keys), COALESCE(credits_used, 0) FROM changed
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
    SELECT user_id, {UTC_MONTH}, cardinality(output_keys), COALESCE(credits_used, 0) FROM attached
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


async def set_prediction(
    conn: asyncpg.Connection, generation_id: uuid.UUID, prediction_id: str, status: Status
) -> Generation | None:
    return one(await conn.fetchrow(SET_PREDICTION, generation_id, prediction_id, status))


async def bind_prediction(conn: asyncpg.Connection, generation_id: uuid.UUID, prediction_id: str) -> Generation | None:
    """Give a generation without a prediction id this one; None when it has one, or another row has this one."""
    try:
        return one(await conn.fetchrow(BIND_PREDICTION, generation_id, prediction_id))
    except asyncpg.UniqueViolationError:  # bound elsewhere between the check and the write
        return None


async def mark_processing(conn: asyncpg.Connection, generation_id: uuid.UUID) -> Generation | None:
    """queued -> processing; None when the row was not queued (already further along, or terminal)."""
    return one(await conn.fetchrow(MARK_PROCESSING, generation_id))


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
    return one(
        await conn.fetchrow(MARK_SUCCEEDED, generation_id, first, output_keys, metrics.predict_time, _credits(metrics))
    )


async def set_metrics(conn: asyncpg.Connection, generation_id: uuid.UUID, metrics: Metrics) -> None:
    await conn.execute(SET_METRICS, generation_id, metrics.predict_time, _credits(metrics))


async def attach_late_outputs(
    conn: asyncpg.Connection, generation_id: uuid.UUID, output_keys: list[str], metrics: Metrics = NO_METRICS
) -> Generation | None:
    """Record outputs stored after the generation ended; None when it has some already (or never ended)."""
    return one(
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
    return one(await conn.fetchrow(MARK_ENDED, generation_id, status, error))
