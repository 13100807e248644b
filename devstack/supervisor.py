"""Keeping started processes running, as compose's `restart: unless-stopped` does.

A supervised process that exits (crash, SIGKILL, SIGTERM from anyone) is started again with a log line. The
delay before a restart doubles while the process keeps dying young (from `RESTART_FIRST_S` up to
`RESTART_MAX_S`), so a crash loop does not spin, and falls back to the first delay once a run lasted
`STABLE_AFTER_S`. A watcher thread does the restarting, so callers (the local stack's main loop, the fault soak)
only start, kill and stop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from devstack.processes import ManagedProcess

logger = logging.getLogger(__name__)

RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 10.0
POLL_S = 0.2


@dataclass
class Supervised:
    label: str
    spawn: Callable[[], ManagedProcess]  # starts the process (without waiting for it to be ready)
    process: ManagedProcess
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    delay_s: float = RESTART_FIRST_S
    restart_at: float | None = None  # when an exited process is due to start again


class Supervisor:
    def __init__(self) -> None:
        self._entries: dict[str, Supervised] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def add(self, label: str, spawn: Callable[[], ManagedProcess]) -> ManagedProcess:
        """Start a process and keep it running under `label` (unique)."""
        with self._lock:
            if label in self._entries:
                raise ValueError(f"{label} is already supervised")
            process = spawn()
            self._entries[label] = Supervised(label, spawn, process)
            return process

    def process(self, label: str) -> ManagedProcess:
        with self._lock:
            return self._entries[label].process

    def restarts(self, label: str) -> int:
        with self._lock:
            return self._entries[label].restarts

    @property
    def labels(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def kill(self, label: str, signum: int = signal.SIGKILL) -> None:
        """Signal the process (its whole group); the supervisor starts it again once it has exited."""
        with self._lock:
            self._entries[label].process.signal(signum)

    def stop(self) -> None:
        """Stop watching, then stop every supervised process (newest first). Idempotent."""
        self._stopping.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        with self._lock:
            entries = list(reversed(self._entries.values()))
            self._entries.clear()
        for entry in entries:
            try:
                entry.process.stop()
            except Exception:  # keep stopping the rest; each failure is reported
                logger.exception("stopping %s failed", entry.label)

    def _watch(self) -> None:
        while not self._stopping.wait(POLL_S):
            with self._lock:
                for entry in self._entries.values():
                    try:
                        self._tend(entry)
                    except Exception:  # one entry's trouble must not end the supervision of all
                        logger.exception("supervising %s failed", entry.label)

    def _tend(self, entry: Supervised) -> None:
        now = time.monotonic()
        if entry.restart_at is None:
            if not entry.process.exited:
                return
            code = entry.process.stop()  # reaps it and closes its log
            if now - entry.started_at >= STABLE_AFTER_S:
                entry.delay_s = RESTART_FIRST_S
            entry.restart_at = now + entry.delay_s
            logger.warning(
                "%s exited with code %s; restarting in %.1fs",
                entry.label,
                code,
                entry.delay_s,
                extra={"label": entry.label, "exit_code": code},
            )
            entry.delay_s = min(entry.delay_s * 2, RESTART_MAX_S)
            return
        if now < entry.restart_at:
            return
        try:
            entry.process = entry.spawn()
        except Exception:  # could not even start: try again after the next delay
            logger.exception("restarting %s failed", entry.label)
            entry.restart_at = now + entry.delay_s
            entry.delay_s = min(entry.delay_s * 2, RESTART_MAX_S)
            return
        entry.started_at, entry.restart_at = now, None
        entry.restarts += 1
        logger.warning("%s restarted (restart %d)", entry.label, entry.restarts, extra={"label": entry.label})
