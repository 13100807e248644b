"""After Skytells' answer to a create call (or its silence): a paid prediction must never be orphaned.

Once Skytells has answered, its prediction costs money whether or not Studio remembers it. So a failed write of
its id is retried for a few seconds; if the database still refuses, the prediction is canceled at Skytells, the
generation ends `failed` (freeing its quota slot and Idempotency-Key) where the database allows it, and the
client gets a 503 with `Retry-After`. Should even that fail, nothing is lost: the callback URL carries the
generation id, so the persister binds the prediction to its generation when the callback comes, and the
generation cannot hold quota past the lost-create-call expiry.

A create call that timed out is no failure either: the generation waits for its callback the same way.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aiohttp import web

from common.db import generations
from common.db.generations import Generation
from common.db.pool import database_failure
from common.errors import ApiError, SkytellsError
from common.keys import POOL, SKYTELLS, UPDATES
from common.predictions import Prediction

logger = logging.getLogger(__name__)

# Pauses before each further attempt at the write: about 3.5 s in all, well within a client's patience.
RECORD_RETRY_PAUSES_S = (0.25, 0.5, 1.0, 1.75)
NOT_RECORDED_ERROR = "Studio could not record the prediction, so it was canceled; please try again"


async def record_prediction(app: web.Application, generation: Generation, prediction: Prediction) -> Generation:
    """The generation with Skytells' prediction id written; ApiError (502 or 503) when it cannot be."""
    pool = app[POOL]
    for pause in (0.0, *RECORD_RETRY_PAUSES_S):
        await asyncio.sleep(pause)
        try:
            async with pool.acquire() as conn:
                updated = await generations.set_prediction(conn, generation.id, prediction.id, prediction.studio_status)
        except asyncpg.UniqueViolationError:
            # Skytells handed out an id another generation already has: never attach one prediction twice.
            async with pool.acquire() as conn:
                failed = await generations.fail_submission(conn, generation.id, "Skytells returned a duplicate id")
            app[UPDATES].notify(failed)
            raise ApiError(502, "Skytells returned a prediction id already in use") from None
        except Exception as exc:
            if not database_failure(exc):
                raise
            logger.warning("could not record the prediction id: %r", exc)
            continue
        if updated is None:  # another prediction was bound to it meanwhile: this one is surplus
            break
        app[UPDATES].notify(updated)
        return updated
    await _abandon(app, generation, prediction)
    raise ApiError(503, "Studio could not record the generation; please try again", {"Retry-After": "2"})


async def await_callback(app: web.Application, generation: Generation, why: str) -> None:
    """The create call got no clear answer: Skytells may have made the prediction. The generation stays queued
    for its callback (which finds it by the reference in the callback URL) or the reconciler (which looks for it
    in Skytells' list of predictions), and a repeat with its Idempotency-Key returns it."""
    logger.warning("no clear answer to the create call (%s); waiting for its outcome", why)
    try:
        async with app[POOL].acquire() as conn:
            await generations.mark_submit_timed_out(conn, generation.id)
    except Exception as exc:
        if not database_failure(exc):
            raise
        # Unmarked, it waits only as long as a lost create call does; its callback still finds it meanwhile.
        logger.error("could not mark the create call as unanswered: %r", exc)


async def _abandon(app: web.Application, generation: Generation, prediction: Prediction) -> None:
    """Cancel the prediction nobody would look after, then end the generation if the database lets us."""
    try:
        await app[SKYTELLS].cancel_prediction(prediction.id)
        logger.error("prediction canceled at Skytells: its id could not be recorded")
    except SkytellsError as exc:
        # Still not orphaned: its callbacks carry the generation id and the persister binds them to it.
        logger.error("could not cancel the unrecorded prediction at Skytells: %s", exc.message)
    try:
        async with app[POOL].acquire() as conn:
            app[UPDATES].notify(await generations.fail_submission(conn, generation.id, NOT_RECORDED_ERROR))
    except Exception as exc:
        if not database_failure(exc):
            raise
        logger.error("could not end the generation either; the lost-create-call expiry will: %r", exc)
