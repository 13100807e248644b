"""This replica's fan-out: updates from `studio.updates` go, in memory, to the open streams and waiting
requests that watch their generation or their user.

Each stream or waiter owns an `Inbox` (a deque and at most one pending future: no task, no database
connection). One task per replica does the rest:
- every `RESYNC_INTERVAL_S` (and at once after RabbitMQ reconnects) it re-reads, in one query, the generations
  watched here that changed lately, and dispatches them like updates: a lost update message delays an event by
  a few seconds at worst, it never loses a terminal state;
- every `REAP_INTERVAL_S` it closes the inboxes whose client has gone away, so their handlers end and free
  everything (aiohttp does not cancel a handler when its client disconnects).
Inboxes drop what their stream already showed (`progress` never goes backwards), so duplicates from the
re-read and late, out-of-order messages are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import asyncpg
from prometheus_client import Counter, Gauge

from common.db import changes
from common.presign import OutputLinks
from common.updates import Update

logger = logging.getLogger(__name__)

RESYNC_INTERVAL_S = 2.0
# Rows are re-read from a little before the previous read: a write whose transaction began earlier may commit
# after it. Re-reading them again is free (inboxes drop what they already showed).
RESYNC_OVERLAP = timedelta(seconds=10)
REAP_INTERVAL_S = 0.5
# A client that reads this far behind is dropped rather than buffered for without end.
INBOX_LIMIT = 1000

OPEN_INBOXES = Gauge("studio_api_live_watchers", "Open event streams and Prefer: wait requests on this replica")
RECEIVED = Counter("studio_api_live_updates_received_total", "Update messages received from studio.updates")
RESYNCED = Counter("studio_api_live_resynced_total", "Generations re-read from the database and dispatched")


class Inbox:
    """Updates for one stream or waiting request, newest last; `closed` once its client went away."""

    __slots__ = ("_items", "_wakeup", "alive", "closed", "shown")

    def __init__(self, alive: Callable[[], bool]) -> None:
        self._items: deque[Update] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self.alive = alive
        self.closed = False
        self.shown: dict[str, int] = {}  # generation id -> progress already shown

    def put(self, update: Update) -> None:
        if len(self._items) >= INBOX_LIMIT:
            self.close()
            return
        self._items.append(update)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def news(self, update: Update) -> bool:
        """Whether `update` moves its generation further than this inbox has shown; if so, it now has."""
        if update.progress <= self.shown.get(update.generation_id, -1):
            return False
        self.shown[update.generation_id] = update.progress
        return True

    async def next(self, timeout: float) -> Update | None:
        """The next update not shown yet; None after `timeout` seconds without one, or once closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            while self._items:
                update = self._items.popleft()
                if self.news(update):
                    return update
            if loop.time() >= deadline:
                return None
            self._wakeup = loop.create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wakeup
            except TimeoutError:
                pass
            finally:
                self._wakeup = None
        return None


class Hub:
    def __init__(self, pool: asyncpg.Pool, links: OutputLinks) -> None:
        self.pool = pool
        self.links = links
        self._streams: Tally[str] = Tally()
        self._by_generation: dict[str, set[Inbox]] = {}
        self._by_user: dict[str, set[Inbox]] = {}
        self._inboxes: set[Inbox] = set()
        self._kick = asyncio.Event()
        self._since: datetime | None = None

    @contextlib.contextmanager
    def watch(
        self, alive: Callable[[], bool], *, generation_id: str | None = None, user_id: str | None = None
    ) -> Iterator[Inbox]:
        """An inbox receiving every update of one generation or of one user's generations, while the block runs.

        Register before reading the current state: whatever changes after that read then reaches the inbox.
        """
        inbox = Inbox(alive)
        index, key = (self._by_generation, generation_id) if generation_id else (self._by_user, user_id)
        if key is None:
            raise ValueError("watch a generation or a user")
        index.setdefault(key, set()).add(inbox)
        self._inboxes.add(inbox)
        OPEN_INBOXES.inc()
        try:
            yield inbox
        finally:
            OPEN_INBOXES.dec()
            self._inboxes.discard(inbox)
            watchers = index.get(key)
            if watchers is not None:
                watchers.discard(inbox)
                if not watchers:
                    del index[key]

    def take_stream(self, user_id: str, limit: int) -> bool:
        """One of the user's `limit` event streams on this replica, or False when all are taken: one account cannot
        hold the replica's memory and sockets with streams it opens. Give it back with `release_stream`."""
        if self._streams[user_id] >= limit:
            return False
        self._streams[user_id] += 1
        return True

    def release_stream(self, user_id: str) -> None:
        self._streams[user_id] -= 1
        if self._streams[user_id] <= 0:
            del self._streams[user_id]

    def dispatch(self, update: Update) -> None:
        inboxes = [*self._by_generation.get(update.generation_id, ()), *self._by_user.get(update.user_id, ())]
        if not inboxes:  # most updates reach replicas where nobody watches: no URLs made for them
            return
        linked = update.linked(self.links)  # once, whatever the number of streams; fresh as it is sent
        for inbox in inboxes:
            inbox.put(linked)

    def receive(self, body: bytes) -> None:
        """An update message from RabbitMQ."""
        RECEIVED.inc()
        try:
            update = Update.from_json(body)
        except ValueError as exc:
            logger.warning("unreadable update ignored: %s", exc)
            return
        self.dispatch(update)

    def resync_soon(self) -> None:
        self._kick.set()

    async def run(self) -> None:
        """Reap departed clients and re-read watched generations, until cancelled."""
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + RESYNC_INTERVAL_S
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REAP_INTERVAL_S):
                    await self._kick.wait()
            self.reap()
            if self._kick.is_set() or loop.time() >= next_resync:
                self._kick.clear()
                next_resync = loop.time() + RESYNC_INTERVAL_S
                try:
                    await self.resync()
                except Exception as exc:  # the database may be away for a while; the next round tries again
                    logger.warning("live updates could not re-read the database: %r", exc)

    def reap(self) -> None:
        for inbox in [i for i in self._inboxes if not i.closed and not i.alive()]:
            inbox.close()

    async def resync(self) -> int:
        """Dispatch every watched generation changed since the previous re-read; how many were read."""
        if not self._by_generation and not self._by_user:
            self._since = None
            return 0
        ids = [uuid.UUID(key) for key in self._by_generation]
        users = list(self._by_user)
        async with self.pool.acquire() as conn:
            read_at = await changes.now(conn)
            since = self._since or read_at - RESYNC_OVERLAP
            rows = await changes.list_changed(conn, ids, users, since)
        self._since = read_at - RESYNC_OVERLAP
        for generation in rows:
            self.dispatch(Update.of(generation))
        RESYNCED.inc(len(rows))
        return len(rows)
