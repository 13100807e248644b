"""The `usage_months` table: what each user used in each UTC month (`GET /api/me`).

Its rows are counted by the statements that create a generation and that store its outputs
(`common/db/generations/`), in the same transaction, never recomputed from `generations`: deleting a
generation later does not give its use back.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# The current UTC month, as `usage_months.month` holds it.
UTC_MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"

CURRENT_MONTH = f"""
SELECT to_char(m.month, 'YYYY-MM') AS month,
       COALESCE(u.generations, 0) AS generations, COALESCE(u.succeeded, 0) AS succeeded,
       COALESCE(u.images, 0) AS images, COALESCE(u.credits_used, 0) AS credits_used
FROM (SELECT {UTC_MONTH} AS month) m
LEFT JOIN usage_months u ON u.user_id = $1 AND u.month = m.month
"""


@dataclass(frozen=True)
class Usage:
    month: str  # YYYY-MM
    generations: int
    succeeded: int
    images: int
    credits_used: float


async def current_month(conn: asyncpg.Connection, user_id: str) -> Usage:
    row = await conn.fetchrow(CURRENT_MONTH, user_id)
    return Usage(
        month=row["month"],
        generations=int(row["generations"]),
        succeeded=int(row["succeeded"]),
        images=int(row["images"]),
        credits_used=float(row["credits_used"]),
    )
