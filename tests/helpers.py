"""What tests share: polling until something observable happens (bounded), and reading a service's log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import Any

import httpx

from common.predictions import TERMINAL


async def wait_for_status(
    http: httpx.AsyncClient,
    api: str,
    generation_id: str,
    headers: dict[str, str],
    timeout: float = 30.0,
    statuses: Collection[str] = TERMINAL,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await http.get(f"{api}/api/predictions/{generation_id}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"generation {generation_id} did not reach {sorted(statuses)} in {timeout}s: {body}")


class ServiceLog:
    """What a service of the test stack logged from the moment this was made (its log is one JSON object a line)."""

    def __init__(self, stack: Any, label: str) -> None:
        self.label = label
        self.path = stack.work_dir / "logs" / f"{label}.log"
        self.offset = self.path.stat().st_size

    def lines(self) -> list[str]:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode("utf-8", "replace").splitlines()

    def tracebacks(self) -> list[str]:
        """Lines carrying a traceback: a logged exception, or one that reached stderr as plain text."""
        return [line for line in self.lines() if '"exc_info"' in line or "Traceback (most recent call last)" in line]
