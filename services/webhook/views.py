"""`POST /api/webhooks`: verify, normalise, publish with confirms, and only then answer 200 (docs/architecture.md).

The order is the cheapest refusal first: encoding and size (before reading), signature (before parsing),
payload, and only then the broker. Every outcome is counted once in `studio_webhook_callbacks_total`.
"""

from __future__ import annotations

import logging
import time

import orjson
from aiohttp import hdrs, web

from common import log as logs
from common.errors import ApiError, BrokerUnavailable
from common.events import PredictionEvent
from common.keys import BROKER, SETTINGS
from common.predictions import parse_prediction
from common.references import GENERATION_PARAM, generation_of_callback
from common.representation import loads
from common.signing import SIGNATURE_HEADER, verify
from common.web import REQUEST_ID
from services.webhook.metrics import IN_FLIGHT, PUBLISH_SECONDS, Outcome, count

logger = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
_CHUNK = 64 * 1024
_OK = orjson.dumps({"ok": True})


def _refuse(outcome: Outcome, status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    count(outcome)
    return ApiError(status, message, headers)


async def _read_body(request: web.Request) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed MAX_BODY (declared, or while streaming)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _refuse(Outcome.TOO_LARGE, 413, "Request body too large")
    if request.content_length is not None:
        return await request.read()  # within the limit, and aiohttp stops at the declared length
    body = bytearray()
    async for chunk in request.content.iter_chunked(_CHUNK):  # chunked: no length to trust up front
        body += chunk
        if len(body) > MAX_BODY:
            raise _refuse(Outcome.TOO_LARGE, 413, "Request body too large")
    return bytes(body)


def _encoded(request: web.Request) -> bool:
    """True for a body sent with a Content-Encoding other than identity. aiohttp would decompress it before
    `read()` returns, and the signature covers the bytes as sent, so such a callback is refused unread."""
    if hdrs.CONTENT_ENCODING not in request.headers:  # the hot path: Skytells sends none
        return False
    codings = ",".join(request.headers.getall(hdrs.CONTENT_ENCODING))
    return any(coding.strip().lower() not in ("", "identity") for coding in codings.split(","))


async def receive(request: web.Request) -> web.Response:
    if _encoded(request):
        raise _refuse(Outcome.BAD_ENCODING, 415, "Content-Encoding not supported: send the body as signed")
    body = await _read_body(request)
    secrets = request.app[SETTINGS].skytells_webhook_secrets
    signatures = request.headers.getall(SIGNATURE_HEADER, [])
    # A repeated header is refused rather than "any of them may match", which would let a forger append one.
    if len(signatures) != 1 or not verify(body, signatures[0], secrets):
        raise _refuse(Outcome.BAD_SIGNATURE, 401, "Invalid signature")
    try:
        payload = loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting is RecursionError
        raise _refuse(Outcome.BAD_PAYLOAD, 400, "Body is not JSON") from None
    try:
        prediction = parse_prediction(payload)
    except ValueError as exc:
        raise _refuse(Outcome.BAD_PAYLOAD, 400, f"Invalid callback: {exc}") from None
    generation_id = generation_of_callback(request.query.get(GENERATION_PARAM), secrets)
    event = PredictionEvent.from_prediction(prediction, "webhook", request.get(REQUEST_ID), generation_id)
    # The request's access line names the prediction and the event: one line per callback, not two.
    logs.annotate(prediction_id=prediction.id, event_id=event.event_id, prediction_status=event.status)
    started = time.perf_counter()
    IN_FLIGHT.inc()
    try:
        await request.app[BROKER].publish_event(event)
    except BrokerUnavailable as exc:
        logger.warning("callback not accepted: %s", exc)
        count(Outcome.BROKER_UNAVAILABLE)
        raise  # 503 with Retry-After: Skytells retries
    finally:
        IN_FLIGHT.dec()
        PUBLISH_SECONDS.observe(time.perf_counter() - started)
    count(Outcome.ACCEPTED)
    return web.Response(body=_OK, content_type="application/json")
