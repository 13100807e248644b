"""Request handlers of the API; `openapi.py` documents what each one answers."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid

from aiohttp import web

from common import log as logs
from common.db import changes, deliveries, generations
from common.db.generations import Generation
from common.events import dumps
from common.predictions import Status
from common.references import callback_url
from common.skytells import SkytellsError, SkytellsUndecided
from common.updates import generation_json
from common.web import REQUEST_ID, ApiError
from services.api import openapi
from services.api.bodies import GenerateRequest, idempotency_key, parse_generate, prefer_wait, read_json_object
from services.api.keys import AUTH, POOL, SETTINGS, SKYTELLS, UPDATES
from services.api.paging import decode_cursor, encode_cursor, parse_limit
from services.api.rate_limit import check_create_rate
from services.api.submission import await_callback, record_prediction
from services.api.waiting import wait_for_end, wait_for_news

logger = logging.getLogger(__name__)

# How long a repeat waits for a concurrent first request with the same Idempotency-Key to get its answer.
REPLAY_WAIT_S = 30.0
JSON = "application/json"


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """`web.json_response` encoded by orjson (`dumps`: compact, non-ASCII text as UTF-8, the stdlib for what
    orjson refuses), in a third of the time; the same Content-Type."""
    return web.Response(body=dumps(body), status=status, headers=headers, content_type=JSON, charset="utf-8")


def _generation_response(generation: Generation, status: int = 200, wait_s: int | None = None) -> web.Response:
    headers = {"Location": f"/api/predictions/{generation.id}"}
    if wait_s is not None:
        headers["Preference-Applied"] = f"wait={wait_s}"
    return _json(generation_json(generation), status, headers)


async def _user(request: web.Request) -> str:
    return await request.app[AUTH].user_id(request)


def skytells_failure(exc: SkytellsError) -> ApiError:
    """Skytells' verdict on the input (400, 422) is the client's 400; its 429 our 503 with its Retry-After, as is
    a Skytells that cannot be reached; any other refusal a 502 with its message."""
    if exc.status in (400, 422):
        return ApiError(400, exc.message)
    if exc.status == 429 or exc.status == 0:
        wait = math.ceil(exc.retry_after) if exc.retry_after is not None else 1
        return ApiError(503, exc.message, {"Retry-After": str(max(1, wait))})
    return ApiError(502, exc.message)


async def _reserve(
    request: web.Request, user_id: str, wanted: GenerateRequest, key: str | None
) -> tuple[Generation, bool]:
    """A new queued generation (False), or the one an earlier request with the same key made (True).

    The per-user lock makes "look up the key, else check the quota and insert" one atomic step, across
    connections and replicas, so concurrent requests with one key never create two generations.
    """
    settings = request.app[SETTINGS]
    deadline = asyncio.get_running_loop().time() + REPLAY_WAIT_S
    # A generation without a prediction id this old was not found at Skytells: it no longer holds quota (the
    # persister's reconciler ends such rows too, for users who never come back, and binds those it finds).
    expiry_s = settings.reconcile_unknown_after_s
    while True:
        async with request.app[POOL].acquire() as conn, conn.transaction():
            await generations.lock_user(conn, user_id)
            expired = await generations.expire_unsubmitted(conn, expiry_s, user_id=user_id)
            if expired:
                logger.warning("ended %d generations never found at Skytells", len(expired), extra={"user": user_id})
            existing = await generations.get_by_idempotency_key(conn, user_id, key) if key else None
            if existing is None:
                created = await generations.insert_within_quota(
                    conn,
                    user_id=user_id,
                    model=wanted.model,
                    prompt=wanted.prompt,
                    max_active=settings.quota_max_active,
                    idempotency_key=key,
                    request_hash=wanted.fingerprint if key else None,
                    request_id=request.get(REQUEST_ID),
                    webhook=wanted.webhook,
                    webhook_events=wanted.webhook_events,
                )
                if created is None:
                    raise ApiError(429, "Quota exceeded")
                return created, False
        if existing.request_hash != wanted.fingerprint:
            raise ApiError(409, "Idempotency-Key was already used with a different request")
        if existing.prediction_id is not None or existing.terminal or existing.submit_timed_out_at is not None:
            return existing, True  # (a timed-out create call: the generation waits for its callback)
        # The first request with this key is still waiting for Skytells: wait for its outcome, woken by the live
        # updates (no connection held meanwhile, so a burst of repeats cannot drain the pool). If Skytells
        # refuses it, its key is released and the next round makes a fresh attempt.
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise ApiError(409, "A request with this Idempotency-Key is still in progress", {"Retry-After": "1"})
        await wait_for_news(request, existing.id, remaining)


async def generate(request: web.Request) -> web.Response:
    user_id = await _user(request)
    await check_create_rate(request, user_id)
    wait_s = prefer_wait(request)
    generation, status = await _create(request, user_id)
    if wait_s is None:
        return _generation_response(generation, status)
    # Held until the generation ends or the time is up, woken by the live updates; no connection held meanwhile.
    return _generation_response(await wait_for_end(request, generation, wait_s), status, wait_s)


async def _create(request: web.Request, user_id: str) -> tuple[Generation, int]:
    """The generation made (201) or, for a repeated Idempotency-Key, the one made first (200)."""
    settings = request.app[SETTINGS]
    key = idempotency_key(request)
    wanted = parse_generate(
        await read_json_object(request), settings.allowed_models, user_id, settings.notify_allow_hosts
    )
    generation, replay = await _reserve(request, user_id, wanted, key)
    if replay:
        return generation, 200

    pool = request.app[POOL]
    with logs.bind(generation_id=str(generation.id)):
        try:
            prediction = await request.app[SKYTELLS].create_prediction(
                wanted.model,
                wanted.prompt,
                callback_url(settings.public_webhook_url, generation.id, settings.skytells_webhook_secrets[0]),
            )
        except SkytellsUndecided as exc:
            # Skytells may have made the (paid) prediction: not a failure, and a repeat with the same
            # Idempotency-Key returns this generation rather than making a second one.
            await await_callback(request.app, generation, exc.message)
            raise ApiError(
                503, "Skytells gave no clear answer; the generation waits for its outcome", {"Retry-After": "5"}
            ) from None
        except SkytellsError as exc:  # refused, or never reached: nothing was made
            # The row exists before Skytells is called; ending it `failed` releases its quota slot.
            async with pool.acquire() as conn:
                request.app[UPDATES].notify(await generations.fail_submission(conn, generation.id, exc.message))
            logger.warning(
                "Skytells refused the prediction: %s",
                exc.message,
                extra={"skytells_status": exc.status, "error_id": exc.error_id},
            )
            raise skytells_failure(exc) from None
        with logs.bind(prediction_id=prediction.id):
            updated = await record_prediction(request.app, generation, prediction)
            logger.info("generation created", extra={"model": wanted.model})
    return updated, 201


def _parse_id(raw: str) -> uuid.UUID:
    """Only the canonical form: other spellings of a UUID are as unknown as any malformed id."""
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, "Not found") from None
    if str(parsed) != raw.lower():
        raise ApiError(404, "Not found")
    return parsed


async def _own_generation(request: web.Request, user_id: str) -> Generation:
    """The caller's generation named in the path; the same 404 for unknown, malformed and others' ids."""
    generation_id = _parse_id(request.match_info["id"])
    async with request.app[POOL].acquire() as conn:
        generation = await generations.get_for_user(conn, generation_id, user_id)
    if generation is None:
        raise ApiError(404, "Not found")
    logs.annotate(generation_id=str(generation.id), prediction_id=generation.prediction_id)
    return generation


async def get_prediction(request: web.Request) -> web.Response:
    return _json(generation_json(await _own_generation(request, await _user(request))))


async def list_generations(request: web.Request) -> web.Response:
    user_id = await _user(request)
    limit = parse_limit(request.query.get("limit"))
    before = decode_cursor(request.query.get("cursor"))
    async with request.app[POOL].acquire() as conn:
        rows = await generations.list_for_user(conn, user_id, limit + 1, before)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
    return _json({"items": [generation_json(g) for g in page], "nextCursor": next_cursor})


async def cancel_prediction(request: web.Request) -> web.Response:
    user_id = await _user(request)
    generation = await _own_generation(request, user_id)
    if generation.terminal:
        raise ApiError(409, f"Generation already finished ({generation.status})")
    if generation.prediction_id is None:
        # Its create call is still under way; there is nothing at Skytells to cancel yet.
        raise ApiError(409, "Generation is still being submitted; retry shortly", {"Retry-After": "1"})
    with logs.bind(generation_id=str(generation.id), prediction_id=generation.prediction_id):
        try:
            prediction = await request.app[SKYTELLS].cancel_prediction(generation.prediction_id)
        except SkytellsError as exc:
            logger.warning("Skytells refused the cancel: %s", exc.message, extra={"skytells_status": exc.status})
            raise skytells_failure(exc) from None
        status = prediction.studio_status
        if status in (Status.SUCCEEDED, Status.FAILED):
            # It finished at Skytells before the cancel reached it; its callback brings the outcome.
            raise ApiError(409, f"Generation already finished ({status})")
        async with request.app[POOL].acquire() as conn:
            ended = None
            if status is Status.CANCELED:
                ended = await generations.mark_ended(conn, generation.id, Status.CANCELED, None)
                request.app[UPDATES].notify(ended)
            current = ended or await generations.get_for_user(conn, generation.id, user_id)
        logger.info("cancel requested", extra={"skytells_status": prediction.status})
    return _json(generation_json(current or generation))


async def list_deliveries(request: web.Request) -> web.Response:
    generation = await _own_generation(request, await _user(request))
    async with request.app[POOL].acquire() as conn:
        items = await deliveries.list_for_generation(conn, generation.id)
    return _json({"items": [delivery.to_json() for delivery in items]})


async def redeliver(request: web.Request) -> web.Response:
    """The delivery pending again, with the same `webhook-id`, so a receiver that deduplicates sees one event."""
    generation = await _own_generation(request, await _user(request))
    delivery_id = _parse_id(request.match_info["deliveryId"])
    async with request.app[POOL].acquire() as conn:
        again = await deliveries.redeliver(conn, generation.id, delivery_id)
        if again is None:
            if await deliveries.get(conn, generation.id, delivery_id) is None:
                raise ApiError(404, "Not found")
            raise ApiError(409, "Delivery already pending")
    logger.info("redelivery asked", extra={"delivery_id": str(delivery_id), "event": again.event})
    return _json(again.to_json(), 202)


async def webhook_secret(request: web.Request) -> web.Response:
    user_id = await _user(request)
    async with request.app[POOL].acquire() as conn:
        key = await deliveries.ensure_key(conn, user_id)
    return _json({"key": key})


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    """A new key; deliveries carry a signature by the old one too for NOTIFY_ROTATION_OVERLAP_S."""
    user_id = await _user(request)
    async with request.app[POOL].acquire() as conn:
        key = await deliveries.rotate_key(conn, user_id)
    logger.info("webhook secret rotated", extra={"user": user_id})
    return _json({"key": key})


async def me(request: web.Request) -> web.Response:
    user_id = await _user(request)
    async with request.app[POOL].acquire() as conn:
        active = await changes.count_active(conn, user_id)
    return _json({"userId": user_id, "activeGenerations": active, "quota": request.app[SETTINGS].quota_max_active})


async def openapi_document(request: web.Request) -> web.Response:
    return _json(openapi.document(request.app[SETTINGS].allowed_models))
