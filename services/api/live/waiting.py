"""`Prefer: wait`: holding the answer of `POST /api/generate` until the generation ends or time is up.

The request waits on the replica's live updates (see `hub.py`), holding no database connection; it reads the
row twice at most: once after it starts listening (so a change just before cannot slip through), and once when
the time is up (the state "as it stands then").
"""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web

from common.db import generations
from common.db.generations import Generation
from common.keys import POOL
from services.api.keys import HUB


def client_connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


async def _read(request: web.Request, generation: Generation) -> Generation:
    async with request.app[POOL].acquire() as conn:
        current = await generations.get_for_user(conn, generation.id, generation.user_id)
    return current or generation


async def wait_for_end(request: web.Request, generation: Generation, seconds: int) -> Generation:
    """The generation once terminal, or as it stands after `seconds` (or when the client went away)."""
    if generation.terminal:
        return generation
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with request.app[HUB].watch(lambda: client_connected(request), generation_id=str(generation.id)) as inbox:
        generation = await _read(request, generation)
        while not generation.terminal and not inbox.closed:
            update = await inbox.next(deadline - loop.time())
            if update is None:
                break
            if update.terminal:
                return await _read(request, generation)
    return generation if generation.terminal else await _read(request, generation)


async def wait_for_news(request: web.Request, generation_id: uuid.UUID, seconds: float) -> None:
    """Return at the generation's next update reaching this replica (the hub's re-read of it included, every few
    seconds), or after `seconds`: a cheap "something may have changed, look again", holding no connection."""
    with request.app[HUB].watch(lambda: client_connected(request), generation_id=str(generation_id)) as inbox:
        await inbox.next(max(0.0, seconds))
