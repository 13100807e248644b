"""Request handlers of the API (SPEC section 3)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from aiohttp import web

from common import log as logs
from common.db import generations
from common.db.generations import Generation
from common.skytells import SkytellsError
from common.web import ApiError
from services.api.auth import authenticate
from services.api.keys import POOL, SETTINGS, SKYTELLS

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_PROMPT = 500
DEFAULT_MODEL = "truefusion-pro"


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def generation_json(generation: Generation) -> dict[str, Any]:
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


async def read_json_object(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "Request body too large")
    raw = await request.read()  # client_max_size stops a chunked body over the limit with a 413
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Body must be a JSON object")
    return body


def _user(request: web.Request) -> str:
    return authenticate(request, request.app[SETTINGS].auth_jwt_secret)


async def generate(request: web.Request) -> web.Response:
    user_id = _user(request)
    settings = request.app[SETTINGS]
    body = await read_json_object(request)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt.strip()) <= MAX_PROMPT:
        raise ApiError(400, "Invalid prompt")
    prompt = prompt.strip()
    model = body.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or model not in settings.allowed_models:
        raise ApiError(400, "Invalid model")
    if "userId" in body and body["userId"] != user_id:
        raise ApiError(403, "userId does not match the authenticated user")

    pool = request.app[POOL]
    async with pool.acquire() as conn, conn.transaction():
        generation = await generations.insert_within_quota(
            conn,
            user_id=user_id,
            model=model,
            prompt=prompt,
            max_active=settings.quota_max_active,
            request_id=request.get("request_id"),
        )
    if generation is None:
        raise ApiError(429, "Quota exceeded")

    with logs.bind(generation_id=str(generation.id)):
        try:
            prediction = await request.app[SKYTELLS].create_prediction(model, prompt, settings.public_webhook_url)
        except SkytellsError as exc:
            # The row exists before Skytells is called; ending it `failed` releases its quota slot.
            async with pool.acquire() as conn:
                await generations.mark_ended(conn, generation.id, "failed", exc.message)
            logger.warning(
                "Skytells refused the prediction: %s",
                exc.message,
                extra={"skytells_status": exc.status, "error_id": exc.error_id},
            )
            if exc.status == 429:
                retry_after = f"{exc.retry_after:g}" if exc.retry_after is not None else "1"
                raise ApiError(503, exc.message, {"Retry-After": retry_after}) from None
            raise ApiError(502, exc.message) from None
        async with pool.acquire() as conn:
            updated = await generations.set_prediction(conn, generation.id, prediction.id, prediction.studio_status)
        generation = updated or generation
        logger.info("generation created", extra={"prediction_id": prediction.id, "model": model})
    return web.json_response(
        generation_json(generation), status=201, headers={"Location": f"/api/predictions/{generation.id}"}
    )


def _parse_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, "Not found") from None


async def get_prediction(request: web.Request) -> web.Response:
    user_id = _user(request)
    generation_id = _parse_id(request.match_info["id"])
    async with request.app[POOL].acquire() as conn:
        generation = await generations.get_for_user(conn, generation_id, user_id)
    if generation is None:
        raise ApiError(404, "Not found")
    return web.json_response(generation_json(generation))
