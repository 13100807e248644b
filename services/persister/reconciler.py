"""Reconciliation (docs/failure-model.md): a lost callback never loses an image.

Every `RECONCILE_INTERVAL_S`, the replica that wins a PostgreSQL advisory lock asks Skytells about the
generations still unfinished `RECONCILE_AFTER_S` after their creation, least recently checked first (a batch
per pass, so however many never finish, each is looked at again within a bounded number of passes), and
publishes a `source: "reconciler"` event for those that finished. The event goes through the same queue and
processing as a callback, and its id is derived from the prediction's content like the gateway's, so a callback
that did arrive and the reconciler's event dedupe. A prediction Skytells does not know (a 502 with an
`error_id`) for longer than an hour ends `failed`. A 429 pauses the pass for its `Retry-After`.

A generation with no recorded prediction id (its create call got no clear answer, or the API died before writing
it) is looked for in Skytells' list of predictions of the days around its creation, by the generation reference
in each prediction's callback URL: found, an event carrying the reference binds it and proceeds like any other;
not found within `RECONCILE_UNKNOWN_AFTER_S`, it ends `failed` and frees its quota. No generation ends `failed`
by Studio's own decision while Skytells may still hold its prediction.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import asyncpg

from common import log as logs
from common.broker import Broker
from common.db import generations, reconciliation
from common.db.generations import Generation
from common.errors import SkytellsError, SkytellsRateLimited, SkytellsUnknownPrediction
from common.events import PredictionEvent
from common.predictions import TERMINAL, Prediction
from common.references import generation_of_webhook_url
from common.settings import Settings
from common.skytells import SkytellsClient
from common.updates import Notify, ignore_change
from services.persister.metrics import RECONCILED, Reconciled

logger = logging.getLogger(__name__)
T = TypeVar("T")

BATCH = 200
# An event the reconciler published is not published again for this long: it is still being processed
# (perhaps retrying a download) and a second copy would only duplicate the work.
REPUBLISH_AFTER_S = 300.0
MAX_RETRY_AFTER_S = 300.0
DEFAULT_RETRY_AFTER_S = 5.0
UNKNOWN_PREDICTION_AFTER_S = 3600.0  # Skytells forgets nothing it made sooner
# Pages of Skytells' list read in one pass while looking for unrecorded predictions (50 each); the pass stops
# earlier once the list reaches predictions made before the oldest generation looked for.
MAX_LIST_PAGES = 40
LIST_MARGIN = timedelta(minutes=2)  # clocks differ, and a create call may take SKYTELLS_TIMEOUT_S


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        broker: Broker,
        skytells: SkytellsClient,
        notify: Notify = ignore_change,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.broker = broker
        self.skytells = skytells
        self.notify = notify  # told of every committed change, for the live updates
        self._published: dict[str, float] = {}

    async def run(self) -> None:
        """Forever, one pass per interval; a failed pass is logged and the next one tries again."""
        while True:
            await asyncio.sleep(max(self.settings.reconcile_interval_s, 0.1))  # 0 must not spin
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("reconciliation pass failed", exc_info=True)

    async def run_once(self) -> int:
        """One pass if this replica gets the lock; returns how many events it published."""
        async with self.pool.acquire() as conn:
            held = True  # until the lock is known to be free: a try cut short may have taken it
            try:
                if not await reconciliation.try_reconciler_lock(conn):
                    held = False
                    return 0
                try:
                    return await self._pass(conn)
                finally:
                    await reconciliation.release_reconciler_lock(conn)
                    held = False
            finally:
                if held:
                    # The persister's pool skips asyncpg's reset on release (see app.py): a session lock whose
                    # release did not happen must not go back to it. Ending the session frees the lock.
                    conn.terminate()

    async def _pass(self, conn: asyncpg.Connection) -> int:
        stale = await reconciliation.claim_stale_unfinished(conn, self.settings.reconcile_after_s, BATCH)
        now = time.monotonic()
        self._published = {k: t for k, t in self._published.items() if now - t < REPUBLISH_AFTER_S}
        published = await self._find_unrecorded(conn, [g for g in stale if g.prediction_id is None])
        for generation in stale:
            if generation.prediction_id is None or generation.prediction_id in self._published:
                continue
            with logs.bind(generation_id=str(generation.id), prediction_id=generation.prediction_id):
                published += await self._reconcile(conn, generation)
        return published

    async def _ask(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, again after each 429 once its Retry-After has passed."""
        while True:
            try:
                return await call()
            except SkytellsRateLimited as exc:
                pause = min(exc.retry_after or DEFAULT_RETRY_AFTER_S, MAX_RETRY_AFTER_S)
                RECONCILED.labels(Reconciled.RATE_LIMITED).inc()
                logger.info("Skytells rate-limited the reconciler; waiting %gs", pause)
                await asyncio.sleep(pause)

    async def _find_unrecorded(self, conn: asyncpg.Connection, unrecorded: list[Generation]) -> int:
        """Look for generations without a prediction id in Skytells' list; returns how many were found."""
        if not unrecorded:
            return 0
        wanted = {str(g.id): g for g in unrecorded}
        oldest = min(g.created_at for g in unrecorded) - LIST_MARGIN
        newest = (
            max(g.created_at for g in unrecorded) + LIST_MARGIN + timedelta(seconds=self.settings.skytells_timeout_s)
        )
        since, until = oldest.date(), newest.date()
        found, page, last_page = 0, 1, 1
        try:
            while wanted and page <= min(last_page, MAX_LIST_PAGES):
                listing = await self._ask(functools.partial(self.skytells.list_predictions, page, since, until))
                for item in listing.items:
                    reference = generation_of_webhook_url(item.webhook_url) if item.webhook_url else None
                    generation = wanted.pop(reference, None) if reference else None
                    if generation is not None:
                        found += await self._bind(generation, item.prediction)
                last_page, page = listing.last_page, page + 1
                if any(i.created_at is not None and i.created_at < oldest for i in listing.items):
                    break  # newest first: the rest is older than anything looked for
        except SkytellsError as exc:
            RECONCILED.labels(Reconciled.ERROR).inc()
            logger.warning("could not list the predictions at Skytells: %s", exc)
            return found  # not looked for is not "not found": nothing ends on this pass
        limit = self.settings.reconcile_unknown_after_s
        ended = await generations.expire_unsubmitted(conn, limit, among=[g.id for g in wanted.values()])
        for generation in ended:
            self.notify(generation)
        if ended:
            RECONCILED.labels(Reconciled.UNSUBMITTED_FAILED).inc(len(ended))
            logger.warning("ended %d generations not found at Skytells within %gs", len(ended), limit)
        return found

    async def _bind(self, generation: Generation, prediction: Prediction) -> int:
        """Hand a found prediction to the persister as an event carrying its generation's reference: processed
        like a callback, it binds the prediction to the generation and applies its status."""
        event = PredictionEvent.from_prediction(prediction, "reconciler", generation_id=str(generation.id))
        await self.broker.publish_event(event)
        self._published[prediction.id] = time.monotonic()
        RECONCILED.labels(Reconciled.FOUND).inc()
        with logs.bind(generation_id=str(generation.id), prediction_id=prediction.id):
            logger.warning("found the prediction of a generation that had none recorded")
        return 1

    async def _reconcile(self, conn: asyncpg.Connection, generation: Generation) -> int:
        assert generation.prediction_id is not None
        prediction_id = generation.prediction_id
        try:
            prediction = await self._ask(lambda: self.skytells.get_prediction(prediction_id))
        except SkytellsUnknownPrediction as exc:
            await self._unknown(conn, generation, exc)
            return 0
        except SkytellsError as exc:
            RECONCILED.labels(Reconciled.ERROR).inc()
            logger.warning("could not look the prediction up at Skytells: %s", exc)
            return 0
        if prediction.studio_status not in TERMINAL:
            RECONCILED.labels(Reconciled.UNFINISHED).inc()
            return 0
        event = PredictionEvent.from_prediction(prediction, "reconciler")
        await self.broker.publish_event(event)
        self._published[prediction.id] = time.monotonic()
        RECONCILED.labels(Reconciled.PUBLISHED).inc()
        logger.info("published the %s event whose callback never came", event.status)
        return 1

    async def _unknown(self, conn: asyncpg.Connection, generation: Generation, exc: SkytellsError) -> None:
        limit = UNKNOWN_PREDICTION_AFTER_S
        error = f"Skytells does not know prediction {generation.prediction_id} ({exc.error_id})"
        ended = await reconciliation.mark_failed_if_created_before(conn, generation.id, error, limit)
        self.notify(ended)
        if ended is not None:
            RECONCILED.labels(Reconciled.UNKNOWN_FAILED).inc()
            logger.warning("generation failed: %s for over %gs", error, limit)
        else:
            RECONCILED.labels(Reconciled.UNKNOWN).inc()
