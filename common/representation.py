"""The generation as clients see it: its public JSON object (the same in every answer, stream event and live
update), and the JSON encoder and decoder every service uses."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson

from common.db.generations import Generation


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def generation_json(generation: Generation) -> dict[str, Any]:
    """The generation object of the public API."""
    return {
        "id": str(generation.id),
        "status": generation.status,
        "model": generation.model,
        "prompt": generation.prompt,
        "outputUrl": generation.output_url,
        "outputUrls": list(generation.output_urls),
        "error": generation.error,
        "createdAt": _iso(generation.created_at),
        "completedAt": _iso(generation.completed_at),
    }


def loads(raw: bytes) -> Any:
    """Parse JSON from a peer (Skytells' callbacks and answers): orjson, for speed; what it refuses but the
    stdlib reads (integers beyond 64 bits, NaN) still gets the stdlib's answer. Raises ValueError
    (UnicodeDecodeError included) or RecursionError on what is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def dumps(value: Any) -> bytes:
    """Compact JSON. orjson, for speed; it refuses strings holding lone surrogates, which a Skytells answer
    parsed by the stdlib can carry: those take the stdlib's path."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()
