"""Claiming due deliveries, attempting them, and recording what became of each.

Every replica runs one dispatcher. It claims due deliveries in PostgreSQL with a lease (`FOR UPDATE SKIP
LOCKED`: replicas never claim the same row at once), renews the leases of what it holds while it works, and
records each attempt only while it still holds the lease. A replica that dies stops renewing; its deliveries
are claimed again by another once their lease (NOTIFY_LEASE_S) runs out, so a delivery is attempted at least
once and, outside such a crash, by one replica at a time.

Outcomes are recorded in batches (`Recorder`): the attempts that finish while one write is under way are
written together by the next, in one statement, each under the same lease check as alone; an idle replica writes
an outcome at once, with no wait for company. A 410 is recorded alone (it ends the receiver's other deliveries).

It wakes on `LISTEN studio_webhook_deliveries` (a trigger notifies when a delivery becomes pending, at the
commit of the change) and otherwise when the next retry falls due, polling at least every second.

Fairness: at most PER_HOST attempts in flight (or waiting their turn) per destination host in this replica; a
claim skips the hosts already at that limit, so a slow or dead receiver holds up only its own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg

from common import log as logs
from common.db import deliveries
from common.db.deliveries import Delivery, DeliveryStatus, Finished, SigningKeys
from common.db.pool import unavailable
from common.settings import Settings
from services.notifier.metrics import ATTEMPT_SECONDS, DELIVERIES, OLDEST_PENDING, PENDING, Outcome
from services.notifier.sender import Answer, Sender

logger = logging.getLogger(__name__)

CHANNEL = "studio_webhook_deliveries"
PER_HOST = 4
MAX_IN_FLIGHT = 256
CLAIM_BATCH = 64
POLL_S = 1.0  # the longest an idle replica goes without looking (a missed notification costs at most this)
STATS_S = 5.0
RECORD_TRIES = 5

T = TypeVar("T")


async def _with_retries(pool: asyncpg.Pool, write: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """`write` on a connection of the pool, again each second while the database is away, RECORD_TRIES in all."""
    for attempt in range(1, RECORD_TRIES + 1):
        try:
            async with pool.acquire() as conn:
                return await write(conn)
        except Exception as exc:
            if not unavailable(exc) or attempt == RECORD_TRIES:
                raise
            await asyncio.sleep(1)
    raise AssertionError("RECORD_TRIES is at least 1")


class Recorder:
    """Writes the outcomes of finished attempts, many in one statement: those that come while a write is under way
    wait for it, then go together (one pool connection, one round trip); the first after a quiet spell goes on
    the loop's next turn. No more than MAX_IN_FLIGHT can be waiting, so a batch needs no cap of its own."""

    def __init__(self, pool: asyncpg.Pool, replica: str) -> None:
        self.pool = pool
        self.replica = replica
        self.queue: list[tuple[Finished, asyncio.Future[bool]]] = []
        self.writer: asyncio.Task[None] | None = None

    async def record(self, finished: Finished) -> bool:
        """Whether it was recorded (False: this replica no longer held the delivery). Raises what kept it from
        being written: the database away through RECORD_TRIES, or any other failure of the statement."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.append((finished, future))
        if self.writer is None or self.writer.done():
            # A context of its own: not the ids bound by the attempt that happened to start it.
            self.writer = asyncio.create_task(self._write(), name="notifier-record", context=contextvars.Context())
        return await future

    async def flush(self, timeout: float) -> None:
        """Let the write under way, and those queued behind it, end (a stopping dispatcher's last outcomes)."""
        if self.writer is not None and not self.writer.done():
            await asyncio.wait([self.writer], timeout=timeout)

    async def _write(self) -> None:
        while self.queue:
            # An id already in this batch (the same delivery claimed again after its lease ran out) waits for the
            # next: one statement updates a row once.
            batch: list[tuple[Finished, asyncio.Future[bool]]] = []
            later: list[tuple[Finished, asyncio.Future[bool]]] = []
            ids: set[uuid.UUID] = set()
            for item in self.queue:
                (later if item[0].id in ids else batch).append(item)
                ids.add(item[0].id)
            self.queue = later
            rows = [finished for finished, _ in batch]

            async def write(conn: asyncpg.Connection, rows: list[Finished] = rows) -> dict[uuid.UUID, Delivery]:
                return await deliveries.finish_many(conn, self.replica, rows)

            try:
                recorded = await _with_retries(self.pool, write)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():  # done: its attempt was cancelled meanwhile
                        future.set_exception(exc)
                continue
            for finished, future in batch:
                if not future.done():
                    future.set_result(finished.id in recorded)


def backoff(attempts: int, base_s: float, longest_s: float) -> float:
    """Full jitter: anywhere from 0 to base doubled per earlier attempt, capped (AWS's "full jitter")."""
    return random.uniform(0, min(longest_s, base_s * 2 ** min(attempts, 32)))


class Dispatcher:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, sender: Sender) -> None:
        self.settings = settings
        self.pool = pool
        self.sender = sender
        self.replica = f"notifier-{uuid.uuid4().hex[:12]}"
        self.recorder = Recorder(pool, self.replica)
        self.held: set[uuid.UUID] = set()
        self.per_host: Counter[str] = Counter()
        self.turns: dict[str, asyncio.Semaphore] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.running = False

    async def run(self) -> None:
        """Until cancelled: claim, attempt, record; the background chores run beside it."""
        self.running = True
        chores = [
            asyncio.create_task(self._listen(), name="notifier-listen"),
            asyncio.create_task(self._renew(), name="notifier-renew"),
            asyncio.create_task(self._stats(), name="notifier-stats"),
        ]
        try:
            while True:
                # Cleared before claiming: a notification that comes during the claim wakes the next wait.
                self.wake.clear()
                try:
                    if await self._claim_once():
                        continue  # there may be more due: claim again before sleeping
                    pause = await self._pause()
                except Exception as exc:
                    # The database away (or anything else): the process stays up, and readiness says why.
                    logger.warning("claiming failed, again shortly: %r", exc)
                    pause = POLL_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), pause)
        finally:
            self.running = False
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)

    async def stop(self) -> None:
        """Let attempts in flight finish (each is bounded by NOTIFY_TIMEOUT_S); free what was never attempted."""
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=self.settings.notify_timeout_s + 5)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.recorder.flush(timeout=5)
        if self.held:
            with contextlib.suppress(Exception):  # the lease runs out anyway
                async with self.pool.acquire(timeout=5) as conn:
                    await deliveries.release(conn, self.replica, list(self.held))

    async def _claim_once(self) -> int:
        room = MAX_IN_FLIGHT - len(self.held)
        if room <= 0:
            return 0
        busy = [host for host, count in self.per_host.items() if count >= PER_HOST]
        async with self.pool.acquire() as conn:
            claimed = await deliveries.claim_due(
                conn, self.replica, self.settings.notify_lease_s, busy, min(room, CLAIM_BATCH)
            )
        for delivery, keys in claimed:
            self.held.add(delivery.id)
            self.per_host[delivery.host] += 1
            task = asyncio.create_task(self._deliver(delivery, keys), name=f"deliver-{delivery.id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return len(claimed)

    async def _pause(self) -> float:
        """Until the next retry falls due, at most POLL_S. Deliveries already due but not claimed wait for a
        host of theirs to have room: the attempt that makes room wakes the loop."""
        async with self.pool.acquire() as conn:
            due = await deliveries.next_due(conn)
        if due is None:
            return POLL_S
        wait = (due - datetime.now(UTC)).total_seconds()
        return POLL_S if wait <= 0 else min(POLL_S, wait)

    async def _deliver(self, delivery: Delivery, keys: SigningKeys) -> None:
        turn = self.turns.setdefault(delivery.host, asyncio.Semaphore(PER_HOST))
        try:
            with logs.bind(generation_id=str(delivery.generation_id), delivery_id=str(delivery.id)):
                async with turn:
                    started = time.perf_counter()
                    answer = await self.sender.attempt(delivery, keys)
                    ATTEMPT_SECONDS.observe(time.perf_counter() - started)
                await self.record(delivery, answer)
        finally:
            full = len(self.held) >= MAX_IN_FLIGHT
            self.held.discard(delivery.id)
            self.per_host[delivery.host] -= 1
            room = self.per_host[delivery.host] < PER_HOST
            if self.per_host[delivery.host] <= 0:
                del self.per_host[delivery.host]
                self.turns.pop(delivery.host, None)
            # A claim now could take more only if this host is below its limit again, or this replica was full;
            # otherwise it would skip the same hosts as the last one and find what that one found.
            if room or full:
                self.wake.set()

    def _verdict(self, delivery: Delivery, answer: Answer) -> tuple[DeliveryStatus, Outcome, datetime | None]:
        if answer.delivered:
            return DeliveryStatus.DELIVERED, Outcome.DELIVERED, None
        if answer.gone:
            return DeliveryStatus.FAILED, Outcome.GONE, None
        if answer.refused:
            return DeliveryStatus.FAILED, Outcome.FORBIDDEN, None
        now = datetime.now(UTC)
        deadline = delivery.changed_at + timedelta(seconds=self.settings.notify_max_age_s)
        if now >= deadline:
            return DeliveryStatus.FAILED, Outcome.EXPIRED, None
        settings = self.settings
        wait = answer.retry_after
        if wait is None:
            wait = backoff(delivery.attempts, settings.notify_retry_base_s, settings.notify_retry_max_s)
        return DeliveryStatus.PENDING, Outcome.RETRIED, min(now + timedelta(seconds=wait), deadline)

    async def record(self, delivery: Delivery, answer: Answer) -> None:
        """Record what one attempt came to, count it and log it (under the ids bound by the caller)."""
        status, outcome, next_at = self._verdict(delivery, answer)
        error = answer.error
        if outcome is Outcome.EXPIRED:
            error = f"{error}; given up {self.settings.notify_max_age_s:g} s after the change"

        async def gone(conn: asyncpg.Connection) -> tuple[Delivery, int] | None:
            return await deliveries.finish(
                conn, delivery.id, self.replica, status, answer.status_code, error, next_at, gone=True
            )

        ended = 0
        try:
            if answer.gone:  # rare, and its statement ends the receiver's other pending deliveries too
                done = await _with_retries(self.pool, gone)
                recorded = done is not None
                ended = 0 if done is None else done[1]
            else:
                recorded = await self.recorder.record(Finished(delivery.id, status, answer.status_code, error, next_at))
        except Exception as exc:
            # Unrecorded, the delivery stays pending under a lease that runs out: attempted again.
            logger.warning("could not record an attempt: %r", exc, extra={"event": delivery.event})
            return
        if not recorded:
            outcome = Outcome.LOST_LEASE
        DELIVERIES.labels(outcome).inc()
        logger.info(
            "webhook %s",
            outcome,
            extra={
                "event": delivery.event,
                "attempt": delivery.attempts + 1,
                "status_code": answer.status_code,
                "error": error,
                "ended_with_it": ended,
            },
        )

    async def _renew(self) -> None:
        """Keep the leases of what this replica holds (in flight or waiting its turn) from running out."""
        lease = self.settings.notify_lease_s
        while True:
            await asyncio.sleep(lease / 3)
            if not self.held:
                continue
            try:
                async with self.pool.acquire() as conn:
                    await deliveries.renew_leases(conn, self.replica, lease, list(self.held))
            except Exception as exc:
                logger.warning("could not renew leases: %r", exc)

    async def _listen(self) -> None:
        """A connection of its own LISTENs for new pending deliveries; reconnects when it is lost."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.settings.database_url, timeout=10)
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _, closed=closed: closed.set())
                await conn.add_listener(CHANNEL, lambda *_: self.wake.set())
                self.wake.set()  # anything recorded while not listening is claimed now
                await closed.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("cannot LISTEN for deliveries, polling meanwhile: %r", exc)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(POLL_S)

    async def _stats(self) -> None:
        while True:
            try:
                async with self.pool.acquire() as conn:
                    pending, oldest_s = await deliveries.pending_stats(conn)
                PENDING.set(pending)
                OLDEST_PENDING.set(oldest_s)
            except Exception as exc:
                logger.debug("pending statistics not read: %r", exc)
            await asyncio.sleep(STATS_S)
