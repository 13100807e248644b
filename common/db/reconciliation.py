"""The reconciler's SQL: its lock, its round-robin turns over unfinished generations, and the hourly give-up.

Functions never commit: the caller owns the transaction.
"""

from __future__ import annotations

import uuid

import asyncpg

from common.db.generations import Generation
from common.db.outbox import recorded

# A session-level lock on a dedicated key: one reconciler pass at a time across every persister replica. It is
# released explicitly after the pass, and by PostgreSQL if the holder's connection dies.
RECONCILER_LOCK_KEY = "studio.persister.reconciler"
TRY_RECONCILER_LOCK = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"
RELEASE_RECONCILER_LOCK = "SELECT pg_advisory_unlock(hashtextextended($1, 0))"

# One pass's turn: the least recently checked unfinished generations, each stamped as checked now. However many
# never finish, they go to the back of the line, so every unfinished generation is looked at again within
# ceil(unfinished / batch) passes, and a newer lost callback cannot hide behind older stuck ones.
CLAIM_STALE_UNFINISHED = """
UPDATE generations SET checked_at = now()
WHERE id IN (
    SELECT id FROM generations
    WHERE status IN ('queued', 'processing')
      AND created_at < now() - make_interval(secs => $1)
    ORDER BY checked_at NULLS FIRST, created_at
    LIMIT $2
)
RETURNING *
"""

MARK_FAILED_IF_CREATED_BEFORE = recorded(
    """
UPDATE generations
SET status = 'failed', error = $2, completed_at = now(), updated_at = now()
WHERE id = $1 AND status IN ('queued', 'processing') AND created_at < now() - make_interval(secs => $3)
RETURNING *
"""
)


async def try_reconciler_lock(conn: asyncpg.Connection) -> bool:
    """Take the reconciler's lock on this connection if no other session holds it; never waits."""
    return bool(await conn.fetchval(TRY_RECONCILER_LOCK, RECONCILER_LOCK_KEY))


async def release_reconciler_lock(conn: asyncpg.Connection) -> None:
    await conn.fetchval(RELEASE_RECONCILER_LOCK, RECONCILER_LOCK_KEY)


async def claim_stale_unfinished(conn: asyncpg.Connection, older_than_s: float, limit: int) -> list[Generation]:
    """This pass's turn: up to `limit` unfinished generations older than `older_than_s`, least recently checked
    first, marked checked."""
    rows = await conn.fetch(CLAIM_STALE_UNFINISHED, older_than_s, limit)
    return sorted((Generation.from_record(row) for row in rows), key=lambda g: g.created_at)


async def mark_failed_if_created_before(
    conn: asyncpg.Connection, generation_id: uuid.UUID, error: str, older_than_s: float
) -> Generation | None:
    """End an unfinished generation `failed` only if it is older than `older_than_s`; else None."""
    record = await conn.fetchrow(MARK_FAILED_IF_CREATED_BEFORE, generation_id, error, older_than_s)
    return None if record is None else Generation.from_record(record)
