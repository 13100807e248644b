"""How the notifier records attempts, against the real PostgreSQL: outcomes that finish together are written in
one statement, each as its row says, and only while this replica holds the delivery (a lease another replica
took over is left to it); outcomes the database never took leave their deliveries pending under the lease. The
deliveries are made here already leased, so a running notifier never claims them."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from common import log as logs
from common.db import deliveries
from common.db.deliveries import Delivery, DeliveryStatus, Finished
from common.db.pool import create_pool
from common.presign import OutputLinks
from common.settings import Settings
from devstack.processes import free_port
from services.notifier.dispatcher import CHANNEL, RECORD_TRIES, Dispatcher
from services.notifier.sender import Answer, Sender

# Deliveries leased as a claim leaves them, for an hour: no other replica takes them meanwhile. Their URL is refused
# without connecting, should the session's notifier attempt one later.
HELD = """
WITH g AS (
    INSERT INTO generations (id, user_id, model, prompt, webhook, webhook_events)
    SELECT gen_random_uuid(), $1, 'truefusion-pro', 'recorded ' || n, 'https://localhost:9/hook', '{completed}'
    FROM generate_series(1, $2) AS n
    RETURNING *
)
INSERT INTO webhook_deliveries
    (id, generation_id, user_id, url, host, event, changed_at, generation, leased_by, leased_until)
SELECT gen_random_uuid(), g.id, g.user_id, g.webhook, 'localhost', 'completed', now(), to_jsonb(g), $3,
       now() + interval '1 hour'
FROM g
RETURNING *
"""
STEAL = "UPDATE webhook_deliveries SET leased_by = 'notifier-another', attempts = 3 WHERE id = $1"
ROWS = "SELECT * FROM webhook_deliveries WHERE id = ANY ($1::uuid[])"


# The statements run on the `pool` fixture's one connection, in order (asyncpg's own type lookups among them).
Seen = list[str]


@pytest.fixture
async def seen() -> Seen:
    return []


@pytest.fixture
async def pool(settings: Settings, seen: Seen) -> AsyncIterator[asyncpg.Pool]:
    """A pool of one connection, made as the services make theirs, whose statements are listed in `seen`."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=1, stateless=True)
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda query: seen.append(query.query))
        yield pool
    finally:
        await pool.close()


async def _held(pool: asyncpg.Pool, user_id: str, count: int, replica: str) -> list[Delivery]:
    async with pool.acquire() as conn:
        return [Delivery.from_record(row) for row in await conn.fetch(HELD, user_id, count, replica)]


async def _rows(pool: asyncpg.Pool, held: list[Delivery]) -> dict[uuid.UUID, asyncpg.Record]:
    async with pool.acquire() as conn:
        return {row["id"]: row for row in await conn.fetch(ROWS, [d.id for d in held])}


async def test_finish_many_records_each_row_as_finish_would_and_only_under_its_lease(pool, settings, user_id):
    replica = "notifier-recording-test"
    held = await _held(pool, user_id, 5, replica)
    delivered, retried, expired, skipped, stolen = held
    async with pool.acquire() as conn:
        await conn.execute("UPDATE webhook_deliveries SET status = 'skipped' WHERE id = $1", skipped.id)
        await conn.execute(STEAL, stolen.id)
    later = datetime.now(UTC) + timedelta(minutes=5)
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(settings.database_url)
    try:
        await listener.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[3]))
        async with pool.acquire() as conn:
            # What was told before (the rows' insert) is heard before this mark.
            await conn.execute("SELECT pg_notify($1, 'mark')", CHANNEL)
            while await asyncio.wait_for(heard.get(), 10) != "mark":
                pass
            recorded = await deliveries.finish_many(
                conn,
                replica,
                [
                    Finished(delivered.id, DeliveryStatus.DELIVERED, 204, None),
                    Finished(retried.id, DeliveryStatus.PENDING, 500, "receiver answered HTTP 500", later),
                    Finished(expired.id, DeliveryStatus.FAILED, 503, "given up", None),
                    Finished(skipped.id, DeliveryStatus.PENDING, 500, "receiver answered HTTP 500", later),
                    Finished(stolen.id, DeliveryStatus.DELIVERED, 200, None),
                ],
            )
        # A retry is pending again: the trigger wakes the notifiers as it does for one recorded alone.
        assert await asyncio.wait_for(heard.get(), 10) == ""
    finally:
        await listener.close()
    rows = await _rows(pool, held)

    assert set(recorded) == {delivered.id, retried.id, expired.id, skipped.id}
    assert all(recorded[id].attempts == 1 and recorded[id].status == rows[id]["status"] for id in recorded)
    got = {d.id: (rows[d.id]["status"], rows[d.id]["last_status_code"], rows[d.id]["last_error"]) for d in held}
    assert got == {
        delivered.id: ("delivered", 204, None),
        retried.id: ("pending", 500, "receiver answered HTTP 500"),
        expired.id: ("failed", 503, "given up"),
        skipped.id: ("skipped", 500, "receiver answered HTTP 500"),  # a skipped start stays skipped
        stolen.id: ("pending", None, None),  # another replica's now: untouched
    }
    assert rows[delivered.id]["delivered_at"] is not None and rows[delivered.id]["next_attempt_at"] is None
    assert rows[retried.id]["next_attempt_at"] == later and rows[retried.id]["delivered_at"] is None
    assert rows[expired.id]["next_attempt_at"] is None and rows[skipped.id]["next_attempt_at"] is None
    assert all(rows[id]["leased_by"] is None and rows[id]["attempts"] == 1 for id in recorded)
    assert (rows[stolen.id]["leased_by"], rows[stolen.id]["attempts"]) == ("notifier-another", 3)


class Lines(logging.Handler):
    """The notifier's log lines as they are written (bound ids included), read back as JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.formatter = logs.JsonFormatter("notifier")
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.formatter.format(record)))


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("studio_notifier_deliveries_total", {"outcome": outcome}) or 0.0


async def test_a_burst_of_attempts_is_recorded_in_one_statement_each_as_it_ended(pool, seen, settings, user_id, caplog):
    async with aiohttp.ClientSession() as http:
        sender = Sender(http, OutputLinks.from_settings(settings), [], 1, 0, 60)  # never sends here
        dispatcher = Dispatcher(settings, pool, sender)
        held = await _held(pool, user_id, 20, dispatcher.replica)
        stolen = held[7]
        async with pool.acquire() as conn:
            await conn.execute(STEAL, stolen.id)
        # The retries are due only at NOTIFY_MAX_AGE_S: the session's notifier leaves them alone until read here.
        answers = {
            d.id: Answer(204, delivered=True) if n % 3 else Answer(503, "receiver answered HTTP 503", retry_after=600)
            for n, d in enumerate(held)
        }
        before = {outcome: _count(outcome) for outcome in ("delivered", "retried", "lost_lease")}
        lines = Lines()
        logger = logging.getLogger("services.notifier.dispatcher")
        logger.addHandler(lines)
        seen.clear()

        async def attempted(delivery: Delivery) -> None:
            with logs.bind(generation_id=str(delivery.generation_id), delivery_id=str(delivery.id)):
                await dispatcher.record(delivery, answers[delivery.id])

        try:
            with caplog.at_level(logging.INFO, logger.name):
                await asyncio.gather(*(attempted(d) for d in held))  # all finished in the same turn of the loop
        finally:
            logger.removeHandler(lines)
    rows = await _rows(pool, held)

    recording = [query for query in seen if query in (deliveries.FINISH, deliveries.FINISH_MANY)]
    assert recording == [deliveries.FINISH_MANY]  # twenty outcomes, one statement
    for delivery in held:
        row = rows[delivery.id]
        if delivery is stolen:
            assert (row["status"], row["attempts"], row["leased_by"]) == ("pending", 3, "notifier-another")
        elif answers[delivery.id].delivered:
            assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 1, 204)
        else:
            assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, 503)
            assert row["next_attempt_at"] is not None and row["leased_by"] is None

    outcomes = {line["delivery_id"]: line for line in lines.lines if line["message"].startswith("webhook ")}
    assert set(outcomes) == {str(d.id) for d in held}
    for delivery in held:
        line = outcomes[str(delivery.id)]
        expected = "lost_lease" if delivery is stolen else "delivered" if answers[delivery.id].delivered else "retried"
        assert line["message"] == f"webhook {expected}"
        assert line["generation_id"] == str(delivery.generation_id)
        assert (line["event"], line["attempt"], line["ended_with_it"]) == ("completed", 1, 0)
        assert line["status_code"] == answers[delivery.id].status_code
    assert _count("lost_lease") - before["lost_lease"] == 1
    assert _count("delivered") - before["delivered"] == 13 - 1  # held[7] was to be delivered
    assert _count("retried") - before["retried"] == 7


async def test_outcomes_the_database_never_took_stay_pending_under_their_lease(pool, settings, user_id, caplog):
    # The dispatcher's database is away for good (nothing listens there); the rows are read through `pool`.
    away = await create_pool(f"postgresql://studio:studio@127.0.0.1:{free_port()}/studio", min_size=0, max_size=1)
    async with aiohttp.ClientSession() as http:
        sender = Sender(http, OutputLinks.from_settings(settings), [], 1, 0, 60)  # never sends here
        dispatcher = Dispatcher(settings, away, sender)
        held = await _held(pool, user_id, 3, dispatcher.replica)
        before = {outcome: _count(outcome) for outcome in ("delivered", "lost_lease")}
        started = time.monotonic()
        try:
            with caplog.at_level(logging.INFO, "services.notifier.dispatcher"):
                await asyncio.wait_for(
                    asyncio.gather(*(dispatcher.record(d, Answer(204, delivered=True)) for d in held)), 30
                )
        finally:
            await away.close()
    rows = await _rows(pool, held)

    assert time.monotonic() - started >= RECORD_TRIES - 1  # tried again each second before giving up
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "notifier" in r.name]
    assert len(warnings) == 3 and all(w.startswith("could not record an attempt") for w in warnings)
    assert all(
        (row["status"], row["attempts"], row["leased_by"]) == ("pending", 0, dispatcher.replica)
        for row in rows.values()
    )
    assert {outcome: _count(outcome) for outcome in before} == before  # nothing counted as done
