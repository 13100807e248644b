"""What a client sends to `POST /api/generate`: the bounded JSON body, its fields, and the Idempotency-Key.

Every way a body can be wrong ends here as a 400 naming the field (or a 413), never as an exception deeper in:
strings that PostgreSQL cannot store (NUL, lone surrogates) are refused like any other invalid value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from common.addresses import host_allowed, valid_hostname
from common.db.deliveries import DEFAULT_EVENTS, EVENTS
from common.db.text import storable
from common.errors import ApiError
from common.web import read_header

MAX_BODY = 64 * 1024
MAX_PROMPT = 500
MAX_IDEMPOTENCY_KEY = 200
IDEMPOTENCY_HEADER = "Idempotency-Key"
PREFER_HEADER = "Prefer"
MAX_WAIT_S = 60  # longest, and default, `Prefer: wait`
MAX_PREFER = 1000  # a Prefer header longer than this is not a preference list but an attack
MAX_WEBHOOK_URL = 2048


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    model: str
    input: dict[str, Any] = field(default_factory=dict)
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """Equal for requests that ask for the same thing; tells a replay from a reused Idempotency-Key."""
        asked: dict[str, Any] = {"model": self.model, "prompt": self.prompt}
        if self.input:  # only then: a request without one keeps the fingerprint it had before inputs existed
            asked["input"] = self.input
        if self.webhook is not None:  # (absent, a request hashes as it did before webhooks existed)
            asked |= {"webhook": self.webhook, "webhookEventsFilter": sorted(self.webhook_events)}
        canonical = json.dumps(asked, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _unstorable(value: Any, path: str = "") -> str | None:
    """The path of the first string (key or value) PostgreSQL cannot hold, or None."""
    if isinstance(value, str):
        return None if storable(value) else path or "input"
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if not storable(key):
                return path or "input"
            found = _unstorable(item, where)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def _parse_input(raw: Any) -> dict[str, Any]:
    """The request's `input`: an object of the model's own options (checked against its schema later)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApiError(400, "Invalid input: input: must be an object")
    if "prompt" in raw:
        raise ApiError(400, "Invalid input: prompt: give the prompt in its own field, not in input")
    try:
        where = _unstorable(raw)
    except RecursionError:
        raise ApiError(400, "Invalid input: input: nested too deeply") from None
    if where is not None:
        raise ApiError(400, f"Invalid input: {where}: text with characters that cannot be stored")
    return raw


async def read_json_object(request: web.Request) -> dict[str, Any]:
    # A declared length over the limit is refused before reading a byte of it; a chunked body is cut off by
    # the application's client_max_size after MAX_BODY bytes (aiohttp then raises a 413).
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "Request body too large")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser goes
        raise ApiError(400, "Body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Body must be a JSON object")
    return body


def parse_generate(
    body: dict[str, Any], allowed_models: tuple[str, ...], user_id: str, notify_allow_hosts: Sequence[str] = ()
) -> GenerateRequest:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not storable(prompt) or not 1 <= len(prompt.strip()) <= MAX_PROMPT:
        raise ApiError(400, "Invalid prompt")
    model = body.get("model", allowed_models[0])  # the first allowed model is the default, everywhere
    if not isinstance(model, str) or model not in allowed_models:
        raise ApiError(400, "Invalid model")
    if "userId" in body:
        if not isinstance(body["userId"], str):
            raise ApiError(400, "Invalid userId")
        if body["userId"] != user_id:
            raise ApiError(403, "userId does not match the authenticated user")
    model_input = _parse_input(body.get("input"))
    events = parse_events_filter(body.get("webhookEventsFilter"))
    webhook = body.get("webhook")
    if webhook is None:
        return GenerateRequest(prompt=prompt.strip(), model=model, input=model_input)
    return GenerateRequest(
        prompt=prompt.strip(),
        model=model,
        input=model_input,
        webhook=parse_webhook(webhook, notify_allow_hosts),
        webhook_events=events,
    )


def parse_webhook(value: object, allow_hosts: Sequence[str]) -> str:
    """An absolute URL a delivery may be posted to: https, or http for a host of `NOTIFY_ALLOW_HOSTS`.

    Where it resolves to is checked at every attempt, not here: an answer given now may change by then."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_WEBHOOK_URL or not value.isascii():
        raise ApiError(400, "Invalid webhook")
    if not value.isprintable() or " " in value:
        raise ApiError(400, "Invalid webhook")
    try:
        parts = urlsplit(value)
        host, port = parts.hostname, parts.port  # `.port` raises on a port that is not a number in range
    except ValueError:
        raise ApiError(400, "Invalid webhook") from None
    if not host or port == 0 or not valid_hostname(host):
        raise ApiError(400, "Invalid webhook")
    if parts.scheme == "https" or (parts.scheme == "http" and host_allowed(host, allow_hosts)):
        return value
    raise ApiError(400, "Invalid webhook")


def parse_events_filter(value: object) -> tuple[str, ...]:
    """A non-empty subset of the events, in their own order; absent: `completed` alone."""
    if value is None:
        return tuple(str(event) for event in DEFAULT_EVENTS)
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise ApiError(400, "Invalid webhookEventsFilter: a non-empty list of start, completed")
    if not set(value) <= set(EVENTS):
        raise ApiError(400, "Invalid webhookEventsFilter: a non-empty list of start, completed")
    return tuple(str(event) for event in EVENTS if event in value)


def idempotency_key(request: web.Request) -> str | None:
    """The validated `Idempotency-Key` header: 1 to 200 printable ASCII characters, or absent."""
    return read_header(request, IDEMPOTENCY_HEADER, max_length=MAX_IDEMPOTENCY_KEY)


def prefer_wait(request: web.Request) -> int | None:
    """Seconds asked for by `Prefer: wait` or `Prefer: wait=N` (RFC 7240; at most 60), or None.

    A preference that cannot be read (`wait=soon`, `wait=0`) is ignored, as the RFC asks; a header that is not
    printable ASCII at all is a 400 like any other malformed header.
    """
    value = read_header(request, PREFER_HEADER, max_length=MAX_PREFER, repeatable=True)
    if value is None:
        return None
    for preference in value.split(","):
        name, _, raw = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        raw = raw.strip().strip('"')
        if not raw:
            return MAX_WAIT_S
        if not raw.isdigit() or int(raw) < 1:
            return None
        return min(int(raw), MAX_WAIT_S)
    return None
