"""Reads of the `generations` table that serve live updates and `GET /api/me`.

Streams take their first events from here, and each API replica re-reads, in one query every few seconds,
whatever its open streams and waiters watch: that re-read, not the update messages, is what guarantees a
stream sees every terminal state.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

import asyncpg

from common.db.generations import Generation

COUNT_ACTIVE = "SELECT count(*) FROM generations WHERE user_id = $1 AND status IN ('queued', 'processing')"

# The first events of a per-user stream: its unfinished generations and, when the client resumes, whatever
# changed after the last event it saw. Oldest change first, so events keep their order.
LIST_OPENING = """
SELECT * FROM generations
WHERE user_id = $1
  AND (status IN ('queued', 'processing') OR ($2::timestamptz IS NOT NULL AND updated_at > $2::timestamptz))
ORDER BY updated_at, id
LIMIT $3
"""

# Uses the primary key for watched ids and (user_id, updated_at) for watched users.
LIST_CHANGED = """
SELECT * FROM generations
WHERE (id = ANY($1::uuid[]) OR user_id = ANY($2::text[])) AND updated_at > $3
ORDER BY updated_at, id
"""

NOW = "SELECT now()"


async def count_active(conn: asyncpg.Connection, user_id: str) -> int:
    return int(await conn.fetchval(COUNT_ACTIVE, user_id))


async def list_opening(
    conn: asyncpg.Connection, user_id: str, changed_after: datetime | None, limit: int
) -> list[Generation]:
    rows = await conn.fetch(LIST_OPENING, user_id, changed_after, limit)
    return [Generation.from_record(row) for row in rows]


async def list_changed(
    conn: asyncpg.Connection, ids: Collection[uuid.UUID], users: Collection[str], since: datetime
) -> list[Generation]:
    rows = await conn.fetch(LIST_CHANGED, list(ids), list(users), since)
    return [Generation.from_record(row) for row in rows]


async def now(conn: asyncpg.Connection) -> datetime:
    moment: datetime = await conn.fetchval(NOW)
    return moment
