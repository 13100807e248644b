"""Request handlers of the API; `openapi.py` documents what each one answers."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from common import log as logs
from common.db import changes, generations, usage
from common.db.generations import Generation
from common.errors import ApiError, SkytellsError, SkytellsUndecided, StorageUnavailable
from common.keys import POOL, S3, SETTINGS, SKYTELLS, UPDATES
from common.predictions import Status
from common.presign import OutputLinks
from common.references import callback_url
from common.representation import generation_json
from common.storage import delete_generation_objects
from common.web import REQUEST_ID
from services.api import openapi, uploads
from services.api.access import current_user, own_generation
from services.api.bodies import GenerateRequest, idempotency_key, parse_generate, prefer_wait, read_json_object
from services.api.keys import LINKS, MODELS
from services.api.live.waiting import wait_for_end, wait_for_news
from services.api.paging import decode_cursor, encode_cursor, parse_limit
from services.api.rate_limit import check_create_rate
from services.api.responses import json_response
from services.api.submission import await_callback, record_prediction

logger = logging.getLogger(__name__)

# How long a repeat waits for a concurrent first request with the same Idempotency-Key to get its answer.
REPLAY_WAIT_S = 30.0


def _generation_response(
    request: web.Request, generation: Generation, status: int = 200, wait_s: int | None = None
) -> web.Response:
    headers = {"Location": f"/api/predictions/{generation.id}"}
    if wait_s is not None:
        headers["Preference-Applied"] = f"wait={wait_s}"
    return json_response(generation_json(generation, _links(request)), status, headers)


def _links(request: web.Request) -> OutputLinks:
    return request.app[LINKS]


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
                    model_input=wanted.input,
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
    user_id = await current_user(request)
    await check_create_rate(request, user_id)
    wait_s = prefer_wait(request)
    generation, status = await _create(request, user_id)
    if wait_s is None:
        return _generation_response(request, generation, status)
    # Held until the generation ends or the time is up, woken by the live updates; no connection held meanwhile.
    return _generation_response(request, await wait_for_end(request, generation, wait_s), status, wait_s)


async def _create(request: web.Request, user_id: str) -> tuple[Generation, int]:
    """The generation made (201) or, for a repeated Idempotency-Key, the one made first (200)."""
    settings = request.app[SETTINGS]
    key = idempotency_key(request)
    wanted = parse_generate(
        await read_json_object(request), settings.allowed_models, user_id, settings.notify_allow_hosts
    )
    # Checked against the model's schema before any quota is taken or Skytells is called.
    wrong = (await request.app[MODELS].schema(wanted.model)).problem(wanted.prompt, wanted.input)
    if wrong is not None:
        raise ApiError(400, f"Invalid input: {wrong}")
    # Upload references resolved before any quota is taken: an unknown one is the client's 400.
    sent_input = await uploads.resolve(request, user_id, wanted.input)
    generation, replay = await _reserve(request, user_id, wanted, key)
    if replay:
        return generation, 200

    pool = request.app[POOL]
    with logs.bind(generation_id=str(generation.id)):
        try:
            prediction = await request.app[SKYTELLS].create_prediction(
                wanted.model,
                {"prompt": wanted.prompt, **sent_input},
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
            raise
        with logs.bind(prediction_id=prediction.id):
            updated = await record_prediction(request.app, generation, prediction)
            logger.info("generation created", extra={"model": wanted.model})
    return updated, 201


async def get_prediction(request: web.Request) -> web.Response:
    return json_response(generation_json(await own_generation(request, await current_user(request)), _links(request)))


# How long a client waits before deleting again after storage failed: a short outage, usually.
STORAGE_RETRY_AFTER = "5"


async def delete_prediction(request: web.Request) -> web.Response:
    """Objects first, then the row: a storage failure leaves the generation as it was, so the call can be
    repeated; the row cannot be gone while objects of it remain."""
    user_id = await current_user(request)
    generation = await own_generation(request, user_id)
    if not generation.terminal:
        raise ApiError(409, f"Generation is still {generation.status}: cancel it first")
    settings = request.app[SETTINGS]
    try:
        deleted = await delete_generation_objects(
            request.app[S3], settings.s3_bucket, generation.id, generation.output_keys
        )
    except StorageUnavailable as exc:
        logger.warning("generation not deleted, storage unavailable: %s", exc)
        raise ApiError(
            503, "Storage is unavailable; nothing was deleted, retry shortly", {"Retry-After": STORAGE_RETRY_AFTER}
        ) from None
    async with request.app[POOL].acquire() as conn:
        if not await generations.delete_finished(conn, generation.id, user_id):
            raise ApiError(404, "Not found")  # a concurrent delete of the same generation won
    try:
        # A late output the persister put after the objects went but recorded before the row did: once the row is
        # gone, the persister deletes what it stores itself, so one more look here leaves nothing behind.
        deleted += await delete_generation_objects(request.app[S3], settings.s3_bucket, generation.id, ())
    except StorageUnavailable as exc:  # the generation is gone; an object left is only what the race put
        logger.warning("second look for outputs of the deleted generation failed: %s", exc)
    for key in generation.output_keys:
        _links(request).forget(key)
    logger.info("generation deleted", extra={"objects": deleted})
    return web.Response(status=204)


async def list_generations(request: web.Request) -> web.Response:
    user_id = await current_user(request)
    limit = parse_limit(request.query.get("limit"))
    before = decode_cursor(request.query.get("cursor"))
    async with request.app[POOL].acquire() as conn:
        rows = await generations.list_for_user(conn, user_id, limit + 1, before)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
    links = _links(request)
    return json_response({"items": [generation_json(g, links) for g in page], "nextCursor": next_cursor})


async def cancel_prediction(request: web.Request) -> web.Response:
    user_id = await current_user(request)
    generation = await own_generation(request, user_id)
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
            raise
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
    return json_response(generation_json(current or generation, _links(request)))


async def me(request: web.Request) -> web.Response:
    user_id = await current_user(request)
    async with request.app[POOL].acquire() as conn:
        active = await changes.count_active(conn, user_id)
        used = await usage.current_month(conn, user_id)
    return json_response(
        {
            "userId": user_id,
            "activeGenerations": active,
            "quota": request.app[SETTINGS].quota_max_active,
            "usage": {
                "month": used.month,
                "generations": used.generations,
                "succeeded": used.succeeded,
                "images": used.images,
                "creditsUsed": used.credits_used,
            },
        }
    )


async def upload(request: web.Request) -> web.Response:
    user_id = await current_user(request)
    return json_response(await uploads.store(request, user_id), 201)


async def list_models(request: web.Request) -> web.Response:
    """The allowed models, the first the default, each with its input schema as Skytells publishes it."""
    await current_user(request)
    allowed = request.app[SETTINGS].allowed_models
    schemas = await asyncio.gather(*(request.app[MODELS].schema(model) for model in allowed))
    items = [
        {"id": model, "default": index == 0, "inputSchema": read.schema}
        for index, (model, read) in enumerate(zip(allowed, schemas, strict=True))
    ]
    return json_response({"items": items})


async def openapi_document(request: web.Request) -> web.Response:
    return json_response(openapi.document(request.app[SETTINGS].allowed_models))
