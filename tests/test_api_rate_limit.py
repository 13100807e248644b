"""RATE_LIMIT_CREATES_PER_MINUTE: counted per user across every API replica, refused before anything costs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from devstack.processes import free_port
from devstack.stack import Stack
from tests.helpers import bearer

PER_MINUTE = 3


@pytest.fixture(scope="module")
async def replicas(services: Stack) -> AsyncIterator[tuple[str, str]]:
    """Two API replicas of the module's own with a small limit, on the session's database."""
    ports = [free_port(), free_port()]
    env = {"RATE_LIMIT_CREATES_PER_MINUTE": str(PER_MINUTE), "QUOTA_MAX_ACTIVE": "100"}
    processes = [
        await asyncio.to_thread(services.start_service, "api", {**env, "API_PORT": str(port)}, f"api-rate-{i}")
        for i, port in enumerate(ports)
    ]
    yield f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
    for process in processes:
        await asyncio.to_thread(process.stop)


async def test_creates_over_the_limit_are_429_on_every_replica_and_reach_no_one(replicas, http, sim):
    first, second = replicas
    user = f"rate-{uuid.uuid4().hex[:8]}"
    auth = bearer(user)
    for api in (first, second, first):  # the limit is the user's, whichever replica answers
        created = await http.post(f"{api}/api/generate", json={"prompt": f"{user} #sim:delay=0.1"}, headers=auth)
        assert created.status_code == 201, created.text
    refused = await http.post(f"{second}/api/generate", json={"prompt": f"{user} refused"}, headers=auth)
    assert refused.status_code == 429
    assert refused.json() == {"error": "Rate limit exceeded"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 // PER_MINUTE
    # Refused before Skytells is called or quota taken.
    made = [p for p in (await http.get(f"{sim}/_sim/predictions")).json() if (p["prompt"] or "").startswith(user)]
    assert len(made) == PER_MINUTE
    me = (await http.get(f"{first}/api/me", headers=auth)).json()
    assert me["activeGenerations"] <= PER_MINUTE
    # Another user is not held back by this one.
    other = bearer(f"{user}-other")
    assert (await http.post(f"{second}/api/generate", json={"prompt": "other"}, headers=other)).status_code == 201
