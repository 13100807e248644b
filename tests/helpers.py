"""Small waits shared by tests: polling until something observable happens, with a bounded deadline."""

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
