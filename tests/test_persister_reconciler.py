"""The reconciler cannot be starved: more generations that never finish than one pass takes do not hide a newer
lost callback, because each pass takes the least recently checked ones."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Iterator

import pytest

from common.db.pool import create_pool
from common.settings import Settings
from devstack.processes import ManagedProcess, free_port
from devstack.stack import Stack
from services.persister.reconciler import BATCH, Reconciler
from tests.persister_kit import cdn_bytes, insert_generation, sim_prediction, stored_objects, wait_row


@pytest.fixture(scope="module")
def reconciling(services: Stack) -> Iterator[ManagedProcess]:
    env = {"PERSISTER_PORT": str(free_port()), "RECONCILE_AFTER_S": "1", "RECONCILE_INTERVAL_S": "0.3"}
    process = services.start_service("persister", env=env, label="persister-reconciling")
    yield process
    process.stop()


async def test_generations_that_never_finish_cannot_hide_a_newer_lost_callback(http, urls, services, db, reconciling):
    # Older than the lost one and more than a pass takes: Skytells does not know them, for less than an hour.
    stuck = [await insert_generation(db, f"pred_gone_{uuid.uuid4().hex}", age_s=600 + n) for n in range(BATCH + 30)]
    try:
        lost = await sim_prediction(http, urls.simulator, "lost behind the stuck ones", fetch=False)
        gid = await insert_generation(db, lost["id"], age_s=5)

        record = await wait_row(db, gid, timeout=90)

        assert record["status"] == "succeeded"
        objects = await stored_objects(services.settings, gid)
        assert objects[f"generations/{gid}.png"][0] == await cdn_bytes(http, urls.simulator, lost["id"])
        checked = await db.fetchval(
            "SELECT count(*) FROM generations WHERE id = ANY($1) AND checked_at IS NOT NULL", stuck
        )
        assert checked == len(stuck)  # every one of them had its turn too
        assert await db.fetchval(
            "SELECT count(*) FROM generations WHERE id = ANY($1) AND status = 'queued'", stuck
        ) == len(stuck)
    finally:
        await db.execute("DELETE FROM generations WHERE id = ANY($1)", stuck)


async def test_a_pass_cut_short_anywhere_leaves_no_lock_on_the_pooled_connection(settings: Settings):
    """The persister's pool skips asyncpg's reset, so nothing else would free a session lock left on a pooled
    connection (and no other replica would reconcile while it lived): the pass is cancelled after more and more
    loop turns, and each time the pool's one connection holds no advisory lock."""
    quiet = dataclasses.replace(settings, reconcile_after_s=86_400)  # claims nothing of the other tests' rows
    pool = await create_pool(settings.database_url, max_size=1, stateless=True)
    reconciler = Reconciler(quiet, pool, None, None)  # type: ignore[arg-type]  # neither is reached
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    try:
        for turns in range(40):
            task = asyncio.get_running_loop().create_task(reconciler.run_once())
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            async with pool.acquire() as conn:
                assert await conn.fetchval(held) == 0, f"lock left after {turns} turns"
        assert await reconciler.run_once() == 0  # a whole pass still runs (or another replica had the turn)
    finally:
        await pool.close()
