"""The generation as clients see it: its public JSON object (the same in every answer, stream event and live
update), and the JSON encoder and decoder every service uses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from common.db.generations import Generation
from common.presign import OutputLinks


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def generation_json(generation: Generation, links: OutputLinks) -> dict[str, Any]:
    """The generation object of the public API, its output URLs made now."""
    return with_urls(unlinked_json(generation), generation.output_keys, links)


def unlinked_json(generation: Generation) -> dict[str, Any]:
    """The generation object without its output URLs: what live updates carry (URLs are made per answer)."""
    return {
        "id": str(generation.id),
        "status": generation.status,
        "model": generation.model,
        "prompt": generation.prompt,
        "input": generation.input,
        "error": generation.error,
        "metrics": {"predictTime": generation.predict_time, "creditsUsed": generation.credits_used},
        "webhook": generation.webhook,
        "webhookEventsFilter": list(generation.webhook_events),
        "createdAt": _iso(generation.created_at),
        "completedAt": _iso(generation.completed_at),
    }


def with_urls(body: dict[str, Any], keys: Sequence[str], links: OutputLinks) -> dict[str, Any]:
    urls = [links.url(key) for key in keys]
    return {**body, "outputUrl": urls[0] if urls else None, "outputUrls": urls}


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
