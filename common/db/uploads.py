"""The `uploads` table: reference images a user stored for image-to-image, and who owns each."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass

import asyncpg

INSERT = """
INSERT INTO uploads (id, user_id, object_key, content_type, bytes) VALUES ($1, $2, $3, $4, $5)
"""
# Only the caller's own: another user's upload is as unknown as one that never existed.
OWNED = "SELECT id, object_key FROM uploads WHERE user_id = $1 AND id = ANY($2::uuid[])"


@dataclass(frozen=True)
class Upload:
    id: uuid.UUID
    user_id: str
    object_key: str
    content_type: str
    bytes: int


async def insert(conn: asyncpg.Connection, upload: Upload) -> None:
    await conn.execute(INSERT, upload.id, upload.user_id, upload.object_key, upload.content_type, upload.bytes)


async def owned_keys(conn: asyncpg.Connection, user_id: str, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Object key of each of `ids` that is one of the user's uploads."""
    rows = await conn.fetch(OWNED, user_id, list(ids))
    return {row["id"]: row["object_key"] for row in rows}
