"""The caller's outbound webhooks: a generation's deliveries, asking for one again, the signing secret and its
rotation (the notifier posts them; `common/db/deliveries.py` holds them)."""

from __future__ import annotations

import logging

from aiohttp import web

from common.db import deliveries
from common.errors import ApiError
from common.keys import POOL
from services.api.access import current_user, own_generation, parse_id
from services.api.responses import json_response

logger = logging.getLogger(__name__)


async def list_deliveries(request: web.Request) -> web.Response:
    generation = await own_generation(request, await current_user(request))
    async with request.app[POOL].acquire() as conn:
        items = await deliveries.list_for_generation(conn, generation.id)
    return json_response({"items": [delivery.to_json() for delivery in items]})


async def redeliver(request: web.Request) -> web.Response:
    """The delivery pending again, with the same `webhook-id`, so a receiver that deduplicates sees one event."""
    generation = await own_generation(request, await current_user(request))
    delivery_id = parse_id(request.match_info["deliveryId"])
    async with request.app[POOL].acquire() as conn:
        again = await deliveries.redeliver(conn, generation.id, delivery_id)
        if again is None:
            if await deliveries.get(conn, generation.id, delivery_id) is None:
                raise ApiError(404, "Not found")
            raise ApiError(409, "Delivery already pending")
    logger.info("redelivery asked", extra={"delivery_id": str(delivery_id), "event": again.event})
    return json_response(again.to_json(), 202)


async def webhook_secret(request: web.Request) -> web.Response:
    user_id = await current_user(request)
    async with request.app[POOL].acquire() as conn:
        key = await deliveries.ensure_key(conn, user_id)
    return json_response({"key": key})


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    """A new key; deliveries carry a signature by the old one too for NOTIFY_ROTATION_OVERLAP_S."""
    user_id = await current_user(request)
    async with request.app[POOL].acquire() as conn:
        key = await deliveries.rotate_key(conn, user_id)
    logger.info("webhook secret rotated", extra={"user": user_id})
    return json_response({"key": key})
