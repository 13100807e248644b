"""`Prefer: wait` on `POST /api/generate` (held until the end or N seconds, no database connection held, the same
for an idempotent repeat), `GET /api/me`, and CORS for exactly the origins in CORS_ALLOWED_ORIGINS."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.conftest import CORS_ORIGIN
from tests.helpers import bearer, eventually, metric, metrics_of, wait_for_status


async def _generate(http, urls, headers, prompt: str) -> httpx.Response:
    return await http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=headers)


async def test_prefer_wait_answers_once_the_generation_has_ended(http, urls, auth):
    response = await _generate(http, urls, {**auth, "Prefer": "wait=20"}, "patience #sim:delay=1")

    assert response.status_code == 201, response.text
    assert response.headers["Preference-Applied"] == "wait=20"
    body = response.json()
    assert body["status"] == "succeeded" and body["outputUrl"], body
    assert response.headers["Location"] == f"/api/predictions/{body['id']}"


async def test_prefer_wait_gives_up_after_n_seconds_with_the_generation_as_it_stands(http, urls, auth):
    response = await _generate(http, urls, {**auth, "Prefer": "respond-async, wait=1"}, "too slow #sim:delay=60")

    assert response.status_code == 201
    assert response.headers["Preference-Applied"] == "wait=1"
    assert response.json()["status"] in ("queued", "processing")


@pytest.mark.parametrize(("prefer", "applied"), [("wait", "wait=60"), ("WAIT=600", "wait=60"), ('wait="5"', "wait=5")])
async def test_prefer_wait_defaults_to_and_never_exceeds_60_seconds(http, urls, auth, prefer, applied):
    response = await _generate(http, urls, {**auth, "Prefer": prefer}, "fast #sim:delay=0.2")

    assert response.status_code == 201
    assert response.headers["Preference-Applied"] == applied
    assert response.json()["status"] == "succeeded"


@pytest.mark.parametrize("prefer", ["wait=soon", "wait=0", "wait=-3", "wait=1.5", "handling=lenient"])
async def test_an_unreadable_preference_is_ignored(http, urls, auth, prefer):
    response = await _generate(http, urls, {**auth, "Prefer": prefer}, "no waiting #sim:delay=60")

    assert response.status_code == 201
    assert "Preference-Applied" not in response.headers
    assert response.json()["status"] in ("queued", "processing")


async def test_a_prefer_header_of_raw_bytes_is_a_400(http, urls, auth):
    response = await http.post(
        f"{urls.api}/api/generate", json={"prompt": "x"}, headers={**auth, "Prefer": b"wait=\xff"}
    )

    assert response.status_code == 400
    assert "Prefer" in response.json()["error"]


async def test_an_idempotent_repeat_waits_the_same_way(http, urls, auth):
    key = {"Idempotency-Key": f"wait-{uuid.uuid4()}"}
    first = await _generate(http, urls, {**auth, **key}, "twice #sim:delay=1.5")
    assert first.status_code == 201 and first.json()["status"] in ("queued", "processing")

    repeat = await _generate(http, urls, {**auth, **key, "Prefer": "wait=20"}, "twice #sim:delay=1.5")

    assert repeat.status_code == 200
    assert repeat.headers["Preference-Applied"] == "wait=20"
    assert repeat.json()["id"] == first.json()["id"]
    assert repeat.json()["status"] == "succeeded"


async def test_waiting_requests_hold_no_database_connection(http, urls):
    """More waiting requests than the API's pool has connections, and the API still answers reads meanwhile."""
    users = [bearer(f"waiter-{uuid.uuid4().hex}") for _ in range(3)]
    before = metric(await metrics_of(http, urls.api), "studio_api_live_watchers")
    waiting = [
        asyncio.create_task(_generate(http, urls, {**users[n % 3], "Prefer": "wait=8"}, f"hold {n} #sim:delay=60"))
        for n in range(15)
    ]

    async def all_waiting() -> bool:
        return metric(await metrics_of(http, urls.api), "studio_api_live_watchers") >= before + 15

    await eventually("15 requests waiting", all_waiting, timeout=20)
    me = await http.get(f"{urls.api}/api/me", headers=users[0])

    assert me.status_code == 200
    assert not any(task.done() for task in waiting)  # answered while all 15 still wait
    assert all(r.status_code == 201 for r in await asyncio.gather(*waiting))


async def test_me_names_the_caller_and_counts_only_unfinished_generations(http, urls, auth, user_id, settings):
    slow = await _generate(http, urls, auth, "one #sim:delay=60")
    done = await _generate(http, urls, auth, "two #sim:delay=0.1")
    await wait_for_status(http, urls.api, done.json()["id"], auth)
    assert slow.status_code == 201

    response = await http.get(f"{urls.api}/api/me", headers=auth)

    assert response.status_code == 200
    me = response.json()
    assert {key: me[key] for key in ("userId", "activeGenerations", "quota")} == {
        "userId": user_id,
        "activeGenerations": 1,
        "quota": settings.quota_max_active,
    }
    assert me["usage"]["generations"] == 2 and me["usage"]["succeeded"] == 1 and me["usage"]["images"] == 1
    assert (await http.get(f"{urls.api}/api/me")).status_code == 401


@pytest.mark.parametrize("path", ["/api/generate", "/api/predictions/x/cancel", "/api/generations/events", "/api/me"])
async def test_preflight_from_an_allowed_origin(http, urls, path):
    response = await http.options(
        f"{urls.api}{path}",
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, prefer",
        },
    )

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {"authorization", "content-type", "idempotency-key", "prefer", "last-event-id"}
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


async def test_answers_to_an_allowed_origin_carry_cors_headers_errors_and_streams_included(http, urls, auth):
    origin = {"Origin": CORS_ORIGIN}
    created = await _generate(http, urls, {**auth, **origin}, "from the browser #sim:delay=0.1")
    refused = await http.get(f"{urls.api}/api/me", headers=origin)
    async with http.stream("GET", f"{urls.api}/api/generations/events", headers={**auth, **origin}) as stream:
        stream_headers = stream.headers

    for response_headers in (created.headers, refused.headers, stream_headers):
        assert response_headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
        exposed = {h.strip().lower() for h in response_headers["Access-Control-Expose-Headers"].split(",")}
        assert exposed == {"location", "x-request-id"}
    assert refused.status_code == 401


@pytest.mark.parametrize("origin", ["https://evil.example", CORS_ORIGIN + ":8443", CORS_ORIGIN.upper(), "null"])
async def test_any_other_origin_gets_no_cors_headers(http, urls, auth, origin):
    preflight = await http.options(
        f"{urls.api}/api/generate", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    answer = await http.get(f"{urls.api}/api/me", headers={**auth, "Origin": origin})

    assert preflight.status_code == 403
    assert answer.status_code == 200
    for response in (preflight, answer):
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]
