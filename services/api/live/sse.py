"""The event-stream wire format of the live endpoints: events, keep-alives, and the `Last-Event-ID` a client
sends back (the `id` of an event: the version of a change, see `common/updates.py`)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from common.errors import ApiError
from common.updates import Update, moment_of
from common.web import read_header

# A comment this often on an idle stream lets clients and proxies tell a quiet stream from a dead one.
KEEPALIVE_S = 15.0
KEEPALIVE = b": keep-alive\n\n"
LAST_EVENT_ID_HEADER = "Last-Event-ID"
EVENT_STREAM = "text/event-stream"
INVALID = "Invalid Last-Event-ID: send back the id of an event of this stream"


def frame(update: Update) -> bytes:
    return b"event: generation\nid: %d\ndata: %s\n\n" % (update.version, update.data)


def moment_after(request: web.Request) -> datetime | None:
    """When the change behind the client's `Last-Event-ID` was made; None when it sent none."""
    version = last_event_id(request)
    try:
        return None if version is None else moment_of(version)
    except OverflowError:
        raise ApiError(400, INVALID) from None


def last_event_id(request: web.Request) -> int | None:
    """The `Last-Event-ID` a reconnecting client sends back: one of our event ids, or a 400."""
    raw = read_header(request, LAST_EVENT_ID_HEADER, max_length=19)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ApiError(400, INVALID)
    return int(raw)
