"""Reading generations (by id, Idempotency-Key, prediction id, a user's pages), and deleting a finished one."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from common.db.generations.record import Generation, one

GET_FOR_USER = "SELECT * FROM generations WHERE id = $1 AND user_id = $2"
EXISTS = "SELECT EXISTS (SELECT 1 FROM generations WHERE id = $1)"
GET_BY_IDEMPOTENCY_KEY = "SELECT * FROM generations WHERE user_id = $1 AND idempotency_key = $2"
GET_BY_PREDICTION_ID = "SELECT * FROM generations WHERE prediction_id = $1"

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


async def get_for_user(conn: asyncpg.Connection, generation_id: uuid.UUID, user_id: str) -> Generation | None:
    return one(await conn.fetchrow(GET_FOR_USER, generation_id, user_id))


async def exists(conn: asyncpg.Connection, generation_id: uuid.UUID) -> bool:
    found: bool = await conn.fetchval(EXISTS, generation_id)
    return found


async def get_by_idempotency_key(conn: asyncpg.Connection, user_id: str, key: str) -> Generation | None:
    return one(await conn.fetchrow(GET_BY_IDEMPOTENCY_KEY, user_id, key))


async def get_by_prediction_id(conn: asyncpg.Connection, prediction_id: str) -> Generation | None:
    return one(await conn.fetchrow(GET_BY_PREDICTION_ID, prediction_id))


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
