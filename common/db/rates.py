"""The per-user create rate (`create_rate`), shared by every API replica: one atomic upsert decides each call."""

from __future__ import annotations

import asyncpg

WINDOW_S = 60.0

# Allowed: the row's theoretical arrival time moves one interval on, and is returned. Refused: nothing changes and
# nothing is returned (the upsert's WHERE is false).
TAKE = """
INSERT INTO create_rate AS r (user_id, tat) VALUES ($1, now() + make_interval(secs => $2))
ON CONFLICT (user_id) DO UPDATE
SET tat = greatest(r.tat, now()) + make_interval(secs => $2)
WHERE greatest(r.tat, now()) + make_interval(secs => $2) <= now() + make_interval(secs => $3)
RETURNING tat
"""

# How long until the next call would be allowed.
WAIT = """
SELECT extract(epoch FROM tat + make_interval(secs => $2) - make_interval(secs => $3) - now())::float8
FROM create_rate WHERE user_id = $1
"""


async def take(conn: asyncpg.Connection, user_id: str, per_minute: int) -> float | None:
    """None when the user may make one more call now (and it is counted); else the seconds to wait."""
    interval = WINDOW_S / per_minute
    if await conn.fetchval(TAKE, user_id, interval, WINDOW_S) is not None:
        return None
    wait = await conn.fetchval(WAIT, user_id, interval, WINDOW_S)
    return max(0.0, float(wait or 0.0))
