"""Server-sent event streams: `GET /api/predictions/{id}/events` (one generation, closed after its terminal
state) and `GET /api/generations/events` (every change of the caller's generations; stays open).

Each event is `event: generation`, `id: <version>` (the change's position, see `common/updates.py`) and the
generation object on one `data:` line. An idle stream gets a `: keep-alive` comment every 15 s, so proxies and
clients can tell a quiet stream from a dead one. A client that resumes with `Last-Event-ID` gets, after the
unfinished generations, whatever changed since that event: it does not miss a terminal state while away.

A client that stays connected but stops reading would block a write for ever, pinning the handler and everything
it holds: a write that waits `WRITE_TIMEOUT_S` disconnects it. A user may hold `STREAMS_PER_USER` streams on one
replica; one more is a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from aiohttp import web

from common.db import changes
from common.errors import ApiError
from common.keys import POOL, SETTINGS
from common.updates import Update
from common.web import REQUEST_ID, REQUEST_ID_HEADER
from services.api.access import current_user, own_generation, parse_id
from services.api.keys import HUB, LINKS
from services.api.live.hub import Inbox
from services.api.live.sse import EVENT_STREAM, KEEPALIVE, KEEPALIVE_S, frame, last_event_id, moment_after
from services.api.live.waiting import client_connected

logger = logging.getLogger(__name__)

# Most unfinished (plus, on resume, changed) generations a per-user stream opens with.
OPENING_LIMIT = 1000
WRITE_TIMEOUT_S = 30.0


class _Stalled(Exception):
    """The client stopped reading: a write waited WRITE_TIMEOUT_S."""


async def _write(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await response.write(data)
    except TimeoutError:
        logger.warning("event stream client stopped reading; disconnected")
        if request.transport is not None:
            request.transport.abort()  # what it has not read is dropped with the connection
        raise _Stalled from None


async def _open(request: web.Request) -> web.StreamResponse:
    headers = {"Content-Type": EVENT_STREAM, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if REQUEST_ID in request:  # set by the error middleware, which cannot add it once the stream has started
        headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    return response


async def _send(request: web.Request, response: web.StreamResponse, inbox: Inbox, update: Update) -> bool:
    """Write one event unless the stream showed it already; False once the client is gone."""
    if not inbox.news(update):
        return True
    try:
        await _write(request, response, frame(update))
    except (ConnectionError, _Stalled):
        return False
    return True


async def _relay(request: web.Request, response: web.StreamResponse, inbox: Inbox, *, until_terminal: bool) -> None:
    while not inbox.closed:
        update = await inbox.next(KEEPALIVE_S)
        try:
            if update is None:
                if not inbox.closed:
                    await _write(request, response, KEEPALIVE)
                continue
            await _write(request, response, frame(update))
        except (ConnectionError, _Stalled):
            return
        if until_terminal and update.terminal:
            return


@contextlib.contextmanager
def _stream_slot(request: web.Request, user_id: str) -> Iterator[None]:
    hub, limit = request.app[HUB], request.app[SETTINGS].streams_per_user
    if not hub.take_stream(user_id, limit):
        raise ApiError(429, f"Too many open event streams (at most {limit} per user)", {"Retry-After": "5"})
    try:
        yield
    finally:
        hub.release_stream(user_id)


async def generation_events(request: web.Request) -> web.StreamResponse:
    user_id = await current_user(request)
    generation_id = parse_id(request.match_info["id"])
    last_event_id(request)  # checked; the stream starts with the current state either way
    alive = lambda: client_connected(request)  # noqa: E731
    with _stream_slot(request, user_id), request.app[HUB].watch(alive, generation_id=str(generation_id)) as inbox:
        current = Update.of(await own_generation(request, user_id)).linked(request.app[LINKS])
        response = await _open(request)
        if await _send(request, response, inbox, current) and not current.terminal:
            await _relay(request, response, inbox, until_terminal=True)
    return response


async def user_events(request: web.Request) -> web.StreamResponse:
    user_id = await current_user(request)
    changed_after = moment_after(request)
    alive = lambda: client_connected(request)  # noqa: E731
    with _stream_slot(request, user_id), request.app[HUB].watch(alive, user_id=user_id) as inbox:
        async with request.app[POOL].acquire() as conn:
            opening = await changes.list_opening(conn, user_id, changed_after, OPENING_LIMIT)
        response = await _open(request)
        links = request.app[LINKS]
        for generation in opening:
            if not await _send(request, response, inbox, Update.of(generation).linked(links)):
                return response
        await _relay(request, response, inbox, until_terminal=False)
    return response
