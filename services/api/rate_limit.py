"""`RATE_LIMIT_CREATES_PER_MINUTE`: how often one user may call `POST /api/generate`, across every API replica.

Checked right after the token and before anything that costs (the body, the quota's lock, Skytells): a refused
call holds no quota and calls no one. The count lives in PostgreSQL (`common/db/rates.py`), not in a process,
so adding replicas does not multiply it.
"""

from __future__ import annotations

import math

from aiohttp import web

from common.db import rates
from common.errors import ApiError
from common.keys import POOL, SETTINGS


async def check_create_rate(request: web.Request, user_id: str) -> None:
    """ApiError 429 with `Retry-After` when the user has used up this minute's creates."""
    per_minute = request.app[SETTINGS].rate_limit_creates_per_minute
    async with request.app[POOL].acquire() as conn:
        wait_s = await rates.take(conn, user_id, per_minute)
    if wait_s is not None:
        raise ApiError(429, "Rate limit exceeded", {"Retry-After": str(max(1, math.ceil(wait_s)))})
