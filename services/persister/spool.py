"""The persister's local spool: outputs downloaded while storage could not take them, kept on disk until it can.

Skytells deletes an output minutes after its prediction completes, and storage can be down for longer; retrying
the event would then find the CDN empty. So when storage fails, the event's outputs are downloaded into the spool
instead and the event is done: the spool, not RabbitMQ, now holds the image, and the drainer puts it and ends the
generation once storage answers, in this process or, after a restart on the same disk, the next.

Layout under `SPOOL_DIR`: an entry is written in `incoming/<random>/` (each output as `<index>` and, last,
`entry.json` naming the keys) and then renamed, whole, into `ready/`; a rename is atomic, so `ready/` never holds
half an entry, and what is left in `incoming/` by a killed process is removed at the next start. The spool never
holds more than `SPOOL_MAX_BYTES`: every output reserves the largest size an output may have before its
download starts, and a writer with no room waits, so a full spool stops intake (events wait in RabbitMQ) and
drops nothing.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from prometheus_client import Gauge

logger = logging.getLogger(__name__)

SPOOL_BYTES = Gauge("studio_persister_spool_bytes", "Bytes of outputs held in the local spool, waiting for storage")
SPOOL_ENTRIES = Gauge("studio_persister_spool_entries", "Generations whose outputs wait in the local spool")
_CHUNK = 256 * 1024
_MANIFEST = "entry.json"


@dataclass(frozen=True)
class Output:
    key: str
    content_type: str
    path: Path

    async def chunks(self) -> AsyncIterator[bytes]:
        with self.path.open("rb") as file:
            while chunk := await asyncio.to_thread(file.read, _CHUNK):
                yield chunk


@dataclass(frozen=True)
class Entry:
    generation_id: uuid.UUID
    folder: Path
    outputs: list[Output]


class Writer:
    """One entry being written: `add` each output in order, then the entry is committed by `Spool.writing`."""

    def __init__(self, spool: Spool, folder: Path) -> None:
        self.spool = spool
        self.folder = folder
        self.outputs: list[dict[str, str]] = []
        self.size = 0

    async def add(self, key: str, content_type: str, chunks: AsyncIterable[bytes]) -> int:
        """Write one output (into room taken with `Spool.reserve`); returns its size. A partial file left by a
        failure goes with the entry's folder."""
        name = str(len(self.outputs))
        written = 0
        with (self.folder / name).open("wb") as file:
            async for chunk in chunks:
                written += len(chunk)
                await asyncio.to_thread(file.write, chunk)
            await asyncio.to_thread(_sync, file)
        self.size += written
        self.outputs.append({"key": key, "contentType": content_type, "file": name})
        return written


class Spool:
    def __init__(self, root: Path, max_bytes: int, output_max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.reservation = min(output_max_bytes, max_bytes)  # a larger output could never fit anyway
        self.used = 0
        self._room = asyncio.Condition()
        self.added = asyncio.Event()  # set when an entry is committed, for the drainer
        self._lock: BinaryIO | None = None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def open(self) -> None:
        """Lock the spool, create its folders, drop what a killed writer left half-written, count what is ready.

        The lock (released by the kernel when the process ends, however it ends) keeps a second persister from
        clearing the first one's half-written entries: SPOOL_DIR is one replica's."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = (self.root / "lock").open("wb")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RuntimeError(f"SPOOL_DIR {self.root} is in use by another persister: give each its own") from None
        shutil.rmtree(self.root / "incoming", ignore_errors=True)
        (self.root / "incoming").mkdir(parents=True, exist_ok=True)
        (self.root / "ready").mkdir(parents=True, exist_ok=True)
        self.used = sum(_size(entry.folder) for entry in self.entries())
        self._report()

    def entries(self) -> list[Entry]:
        """Every complete entry, oldest first."""
        found = []
        for folder in sorted((self.root / "ready").iterdir(), key=lambda path: path.stat().st_mtime):
            try:
                manifest = json.loads((folder / _MANIFEST).read_bytes())
                outputs = [Output(o["key"], o["contentType"], folder / o["file"]) for o in manifest["outputs"]]
                found.append(Entry(uuid.UUID(manifest["generationId"]), folder, outputs))
            except (OSError, ValueError, KeyError, TypeError):
                logger.error("unreadable spool entry left in place", extra={"folder": str(folder)})
        return found

    @asynccontextmanager
    async def writing(self, generation_id: uuid.UUID) -> AsyncIterator[Writer]:
        """An entry for `generation_id`: committed when the block ends normally, removed when it raises."""
        folder = self.root / "incoming" / uuid.uuid4().hex
        folder.mkdir()
        writer = Writer(self, folder)
        try:
            yield writer
            manifest = {"generationId": str(generation_id), "outputs": writer.outputs}
            (folder / _MANIFEST).write_text(json.dumps(manifest))
            await asyncio.to_thread(_sync_folder, folder)
            folder.rename(self.root / "ready" / f"{generation_id}-{folder.name}")
        except BaseException:
            await self.release(writer.size)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._report()
        self.added.set()

    async def remove(self, entry: Entry) -> None:
        size = _size(entry.folder)
        shutil.rmtree(entry.folder, ignore_errors=True)
        await self.release(size)

    async def reserve(self) -> int:
        """Room for one output, waiting while the spool is full; give back what is not used with `release`."""
        async with self._room:
            await self._room.wait_for(lambda: self.used + self.reservation <= self.max_bytes)
            self.used += self.reservation
        return self.reservation

    async def release(self, size: int) -> None:
        async with self._room:
            self.used -= size
            self._room.notify_all()
        self._report()

    def _report(self) -> None:
        SPOOL_BYTES.set(self.used)
        SPOOL_ENTRIES.set(sum(1 for _ in (self.root / "ready").iterdir()))


async def drain(spool: Spool, settle: Callable[[Entry], Any], interval_s: float = 2.0) -> None:
    """Put what the spool holds, whenever an entry arrives and every `interval_s` while any is waiting; an entry
    leaves the spool only once `settle` has stored its outputs and written the generation's outcome."""
    while True:
        spool.added.clear()
        for entry in spool.entries():
            try:
                await settle(entry)
            except Exception as exc:  # storage or the database still down: the next round tries again
                gid = str(entry.generation_id)
                logger.warning("spooled outputs not stored yet: %s", exc, extra={"generation_id": gid})
                break
            await spool.remove(entry)
            logger.info("spooled outputs stored", extra={"generation_id": str(entry.generation_id)})
        if spool.entries():
            await asyncio.sleep(interval_s)
        else:
            await spool.added.wait()


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.name != _MANIFEST)


def _sync(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
