"""The quota holds under concurrency across replicas: many simultaneous requests for one user, spread over two
API processes, give exactly QUOTA_MAX_ACTIVE 201s and 429s for the rest; a failed create releases its slot,
and a generation whose create call was lost stops holding one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from common.db.generations import UNANSWERED_ERROR
from devstack.processes import free_port
from devstack.stack import Stack


@pytest.fixture(scope="module")
def second_api(services: Stack) -> Iterator[str]:
    """Another API replica on the same database."""
    port = free_port()
    process = services.start_service("api", env={"API_PORT": str(port)}, label="api-2")
    yield f"http://127.0.0.1:{port}"
    process.stop()


async def test_concurrent_requests_over_two_replicas_never_exceed_the_quota(
    http, urls, second_api, auth, user_id, settings, db
):
    quota = settings.quota_max_active
    attempts = quota * 3
    # Long enough that nothing finishes (and frees a slot) while the requests are being answered.
    body = {"prompt": "a crowd #sim:delay=60"}
    apis = [urls.api, second_api]

    answers = await asyncio.gather(
        *(http.post(f"{apis[n % 2]}/api/generate", json=body, headers=auth) for n in range(attempts))
    )

    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == quota, statuses
    assert statuses.count(429) == attempts - quota, statuses
    assert {a.json()["error"] for a in answers if a.status_code == 429} == {"Quota exceeded"}
    active = await db.fetchval(
        "SELECT count(*) FROM generations WHERE user_id = $1 AND status IN ('queued', 'processing')", user_id
    )
    assert active == quota


async def test_a_refused_create_releases_its_slot(http, urls, auth, user_id, settings, db):
    quota = settings.quota_max_active
    for _ in range(quota + 2):
        refused = await http.post(f"{urls.api}/api/generate", json={"prompt": "no #sim:reject=403"}, headers=auth)
        assert refused.status_code == 502

    accepted = await http.post(f"{urls.api}/api/generate", json={"prompt": "yes"}, headers=auth)

    assert accepted.status_code == 201, accepted.text
    failed = await db.fetchval("SELECT count(*) FROM generations WHERE user_id = $1 AND status = 'failed'", user_id)
    assert failed == quota + 2


async def test_a_generation_whose_create_call_was_lost_stops_holding_quota(http, urls, auth, user_id, settings, db):
    # What an API crash between the insert and Skytells' answer leaves behind: rows without a prediction id, older
    # than any of them is looked for at Skytells.
    lost = [uuid.uuid4() for _ in range(settings.quota_max_active)]
    for gid in lost:
        await db.execute(
            "INSERT INTO generations (id, user_id, model, prompt, idempotency_key, created_at)"
            " VALUES ($1, $2, 'truefusion-pro', 'lost', $3, now() - make_interval(secs => $4))",
            gid,
            user_id,
            f"key-{gid}",
            settings.reconcile_unknown_after_s + 1,
        )

    accepted = await http.post(
        f"{urls.api}/api/generate",
        json={"prompt": "after a crash"},
        headers={**auth, "Idempotency-Key": f"key-{lost[0]}"},
    )

    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["id"] not in {str(g) for g in lost}
    rows = await db.fetch("SELECT status, error, idempotency_key FROM generations WHERE id = ANY($1)", lost)
    assert {(r["status"], r["error"], r["idempotency_key"]) for r in rows} == {("failed", UNANSWERED_ERROR, None)}
