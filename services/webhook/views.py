"""`POST /api/webhooks`: verify, normalise, publish with confirms, and only then answer 200 (SPEC section 4)."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from common import log as logs
from common.errors import BrokerUnavailable
from common.events import PredictionEvent
from common.signing import SIGNATURE_HEADER, verify
from common.skytells import parse_prediction
from common.web import ApiError
from services.webhook.keys import BROKER, SETTINGS

logger = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024


async def receive(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "Request body too large")
    body = await request.read()  # client_max_size stops a chunked body over the limit with a 413
    signatures = request.headers.getall(SIGNATURE_HEADER, [])
    if len(signatures) != 1 or not verify(body, signatures[0], request.app[SETTINGS].skytells_webhook_secrets):
        raise ApiError(401, "Invalid signature")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Body is not JSON") from None
    try:
        prediction = parse_prediction(payload)
    except ValueError as exc:
        raise ApiError(400, f"Invalid callback: {exc}") from None
    event = PredictionEvent.from_prediction(prediction, "webhook", request.get("request_id"))
    with logs.bind(prediction_id=prediction.id, event_id=event.event_id):
        try:
            await request.app[BROKER].publish_event(event)
        except BrokerUnavailable as exc:
            logger.warning("callback not accepted: %s", exc)
            raise ApiError(503, "Event broker unavailable, retry later", {"Retry-After": "5"}) from None
        logger.info("callback accepted", extra={"status": event.status})
    return web.json_response({"ok": True})
