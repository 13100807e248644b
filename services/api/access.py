"""Who is asking, and which of their generations the path names: what every endpoint about one generation
checks first, views and streams alike."""

from __future__ import annotations

import uuid

from aiohttp import web

from common import log as logs
from common.db import generations
from common.db.generations import Generation
from common.errors import ApiError
from common.keys import POOL
from services.api.keys import AUTH


async def current_user(request: web.Request) -> str:
    """The caller's user id, from their bearer token (401 otherwise)."""
    return await request.app[AUTH].user_id(request)


def parse_id(raw: str) -> uuid.UUID:
    """Only the canonical form: other spellings of a UUID are as unknown as any malformed id."""
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, "Not found") from None
    if str(parsed) != raw.lower():
        raise ApiError(404, "Not found")
    return parsed


async def own_generation(request: web.Request, user_id: str) -> Generation:
    """The caller's generation named in the path; the same 404 for unknown, malformed and others' ids."""
    generation_id = parse_id(request.match_info["id"])
    async with request.app[POOL].acquire() as conn:
        generation = await generations.get_for_user(conn, generation_id, user_id)
    if generation is None:
        raise ApiError(404, "Not found")
    logs.annotate(generation_id=str(generation.id), prediction_id=generation.prediction_id)
    return generation
