"""The persister's local spool on a real folder: what survives a killed writer, how a full spool holds writers
back rather than dropping anything, and that one folder serves one persister."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.persister.spool import Spool


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _keep(spool: Spool, generation_id: uuid.UUID, body: bytes) -> None:
    async with spool.writing(generation_id) as writer:
        reserved = await spool.reserve()
        written = await writer.add(f"generations/{generation_id}.png", "image/png", _chunks(body))
        await spool.release(reserved - written)


async def test_a_committed_entry_is_found_again_and_a_half_written_one_is_not(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000, output_max_bytes=100)
    spool.open()
    kept = uuid.uuid4()
    await _keep(spool, kept, b"image bytes")
    with pytest.raises(ConnectionError):  # the download broke off: the entry is not committed
        async with spool.writing(uuid.uuid4()) as writer:
            await writer.add("generations/x.png", "image/png", _chunks(b"half"))
            raise ConnectionError("cut")
    (tmp_path / "incoming" / "left-by-a-killed-writer").mkdir()
    spool.close()

    again = Spool(tmp_path, max_bytes=1000, output_max_bytes=100)
    again.open()
    [entry] = again.entries()
    assert entry.generation_id == kept
    assert [(o.key, o.content_type, o.path.read_bytes()) for o in entry.outputs] == [
        (f"generations/{kept}.png", "image/png", b"image bytes")
    ]
    assert again.used == len(b"image bytes")
    assert list((tmp_path / "incoming").iterdir()) == []
    await again.remove(entry)
    assert again.entries() == [] and again.used == 0
    again.close()


async def test_a_full_spool_holds_the_writer_back_until_an_entry_leaves(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=150, output_max_bytes=100)
    spool.open()
    await _keep(spool, uuid.uuid4(), b"x" * 100)
    waiting = asyncio.create_task(_keep(spool, uuid.uuid4(), b"y" * 10))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # 100 held + 100 reserved for the next output would be over 150
    [entry] = spool.entries()
    await spool.remove(entry)
    await asyncio.wait_for(waiting, 5)
    assert [e.outputs[0].path.read_bytes() for e in spool.entries()] == [b"y" * 10]
    spool.close()


def test_one_folder_is_one_persisters(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_bytes=1000, output_max_bytes=100)
    first.open()
    with pytest.raises(RuntimeError, match="in use by another persister"):
        Spool(tmp_path, max_bytes=1000, output_max_bytes=100).open()
    first.close()
    after = Spool(tmp_path, max_bytes=1000, output_max_bytes=100)
    after.open()  # the lock goes with the process that held it
    after.close()
