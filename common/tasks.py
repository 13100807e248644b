"""A background task's whole life: started, and at the end cancelled and awaited, so that no task outlives what
it works on and none is left for the loop to complain about."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has ended (its cancellation is not re-raised here)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, Any], name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Run `work` as a task while the block runs; cancel it and wait for it on the way out."""
    task = asyncio.get_running_loop().create_task(work, name=name)
    try:
        yield task
    finally:
        await stop(task)
