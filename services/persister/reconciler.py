"""Reconciliation (docs/failure-model.md): a lost callback never loses an image.

Every `RECONCILE_INTERVAL_S`, the replica that wins a PostgreSQL advisory lock asks Skytells about the
generations still unfinished `RECONCILE_AFTER_S` after their creation, least recently checked first (a batch
per pass, so however many never finish, each is looked at again within a bounded number of passes), and
publishes a `source: "reconciler"` event for those that finished. The event goes through the same queue and
processing as a callback, and its id is derived from the prediction's content like the gateway's, so a callback
that did arrive and the reconciler's event dedupe. A prediction Skytells does not know (a 502 with an
`error_id`) for longer than `RECONCILE_UNKNOWN_AFTER_S` ends `failed`, and so does a generation whose create
call was lost (no prediction id, older than any create call can take; one whose create call timed out waits as
long as an unknown prediction). A 429 pauses the pass for its `Retry-After`.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from common import log as logs
from common.broker import Broker
from common.db import generations, reconciliation
from common.db.generations import Generation
from common.events import PredictionEvent
from common.predictions import TERMINAL
from common.settings import Settings
from common.skytells import SkytellsClient, SkytellsError
from common.updates import Notify, ignore_change
from services.persister.metrics import RECONCILED, Reconciled

logger = logging.getLogger(__name__)

BATCH = 200
# An event the reconciler published is not published again for this long: it is still being processed
# (perhaps retrying a download) and a second copy would only duplicate the work.
REPUBLISH_AFTER_S = 300.0
MAX_RETRY_AFTER_S = 300.0
DEFAULT_RETRY_AFTER_S = 5.0


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
        # Rows whose create call was lost (an API crash before Skytells answered) have no prediction to look up;
        # end them so they stop showing `queued` and holding quota.
        expiry_s = generations.unsubmitted_expiry_s(self.settings.skytells_timeout_s)
        expired = await generations.expire_unsubmitted(conn, expiry_s, self.settings.reconcile_unknown_after_s)
        if expired:
            RECONCILED.labels(Reconciled.UNSUBMITTED_FAILED).inc(expired)
            logger.warning("ended %d generations whose create call was lost", expired)
        stale = await reconciliation.claim_stale_unfinished(conn, self.settings.reconcile_after_s, BATCH)
        now = time.monotonic()
        self._published = {k: t for k, t in self._published.items() if now - t < REPUBLISH_AFTER_S}
        published = 0
        for generation in stale:
            if generation.prediction_id in self._published:
                continue
            with logs.bind(generation_id=str(generation.id), prediction_id=generation.prediction_id):
                published += await self._reconcile(conn, generation)
        return published

    async def _reconcile(self, conn: asyncpg.Connection, generation: Generation) -> int:
        if generation.prediction_id is None:  # the query selects only rows that have one
            return 0
        while True:
            try:
                prediction = await self.skytells.get_prediction(generation.prediction_id)
                break
            except SkytellsError as exc:
                if exc.status == 429:
                    pause = min(exc.retry_after or DEFAULT_RETRY_AFTER_S, MAX_RETRY_AFTER_S)
                    RECONCILED.labels(Reconciled.RATE_LIMITED).inc()
                    logger.info("Skytells rate-limited the reconciler; waiting %gs", pause)
                    await asyncio.sleep(pause)
                    continue
                if exc.status == 502 and exc.error_id:
                    await self._unknown(conn, generation, exc)
                    return 0
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
        limit = self.settings.reconcile_unknown_after_s
        error = f"Skytells does not know prediction {generation.prediction_id} ({exc.error_id})"
        ended = await reconciliation.mark_failed_if_created_before(conn, generation.id, error, limit)
        self.notify(ended)
        if ended is not None:
            RECONCILED.labels(Reconciled.UNKNOWN_FAILED).inc()
            logger.warning("generation failed: %s for over %gs", error, limit)
        else:
            RECONCILED.labels(Reconciled.UNKNOWN).inc()
