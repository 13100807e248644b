"""`GET /api/generations` paging: the `limit` parameter and the opaque keyset cursor over (created_at, id).

The cursor is the position of the last item served, so rows inserted meanwhile (always newer) never shift a
page. It carries nothing secret: every query is filtered by the caller's user id anyway.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import UTC, datetime

from common.db.generations import Generation
from common.errors import ApiError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_LIMIT = re.compile(r"[0-9]{1,4}")
_SEPARATOR = "|"

Position = tuple[datetime, uuid.UUID]


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, f"Invalid limit: an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def encode_cursor(generation: Generation) -> str:
    position = f"{generation.created_at.isoformat()}{_SEPARATOR}{generation.id}"
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def decode_cursor(raw: str | None) -> Position | None:
    """The position a cursor stands for; None for no (or an empty) cursor; ApiError 400 for a bad one."""
    if not raw:
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        stamp, _, ident = text.partition(_SEPARATOR)
        created_at = datetime.fromisoformat(stamp)
        generation_id = uuid.UUID(ident)
        if created_at.tzinfo is None or str(generation_id) != ident:
            raise ValueError("not a cursor this service made")
        created_at = created_at.astimezone(UTC)  # overflows here, not in the driver, at the ends of time
    except (ValueError, OverflowError, binascii.Error):  # UnicodeDecodeError is a ValueError
        raise ApiError(400, "Invalid cursor") from None
    return created_at, generation_id
