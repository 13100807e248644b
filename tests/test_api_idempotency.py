"""`Idempotency-Key`: a repeat answers 200 with the first generation and no second Skytells call (counted at
the simulator), another body is a 409, keys are per user, and two concurrent requests with one key make one
prediction."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.conftest import Urls
from tests.helpers import bearer


async def _sim_creates(http: httpx.AsyncClient, urls: Urls, prompt: str) -> int:
    """How many predictions the simulator was asked to create with exactly this prompt."""
    response = await http.get(f"{urls.simulator}/_sim/predictions")
    return sum(1 for item in response.json() if item["prompt"] == prompt)


def _unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


async def test_repeat_returns_the_first_generation_without_calling_skytells_again(http, urls, auth):
    prompt, key = _unique("a quiet harbour"), uuid.uuid4().hex
    headers = {**auth, "Idempotency-Key": key}

    first = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=headers)
    again = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=headers)

    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert await _sim_creates(http, urls, prompt) == 1


async def test_same_key_with_another_body_is_409(http, urls, auth):
    headers = {**auth, "Idempotency-Key": uuid.uuid4().hex}
    first = await http.post(f"{urls.api}/api/generate", json={"prompt": _unique("one")}, headers=headers)

    other = await http.post(f"{urls.api}/api/generate", json={"prompt": _unique("two")}, headers=headers)
    other_model = await http.post(
        f"{urls.api}/api/generate",
        json={"prompt": first.json()["prompt"], "model": "truefusion-edge"},
        headers=headers,
    )

    assert first.status_code == 201
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["error"]
    assert other_model.status_code == 409


async def test_keys_are_per_user(http, urls, auth):
    prompt, key = _unique("shared key"), uuid.uuid4().hex
    other_user = bearer(f"other-{uuid.uuid4().hex}")

    mine = await http.post(
        f"{urls.api}/api/generate", json={"prompt": prompt}, headers={**auth, "Idempotency-Key": key}
    )
    theirs = await http.post(
        f"{urls.api}/api/generate", json={"prompt": prompt}, headers={**other_user, "Idempotency-Key": key}
    )

    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    assert await _sim_creates(http, urls, prompt) == 2


async def test_concurrent_requests_with_one_key_make_one_prediction(http, urls, auth):
    # Skytells answers the first create slowly, so the second request arrives while the first is in flight.
    prompt, key = _unique("a slow lantern #sim:slow=1"), uuid.uuid4().hex
    headers = {**auth, "Idempotency-Key": key}

    answers = await asyncio.gather(
        *(http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=headers) for _ in range(3))
    )

    assert sorted(a.status_code for a in answers) == [200, 200, 201], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert await _sim_creates(http, urls, prompt) == 1


async def test_a_refused_attempt_releases_its_key_for_a_retry(http, urls, auth, db):
    prompt, key = _unique("refused #sim:reject=403"), uuid.uuid4().hex
    headers = {**auth, "Idempotency-Key": key}

    first = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=headers)
    retry = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=headers)

    assert (first.status_code, retry.status_code) == (502, 502)
    rows = await db.fetch("SELECT status, idempotency_key FROM generations WHERE prompt = $1", prompt)
    assert [(r["status"], r["idempotency_key"]) for r in rows] == [("failed", None), ("failed", None)]


@pytest.mark.parametrize("key", ["", "k" * 201, "caf\u00e9", "tab\tinside"])
async def test_malformed_keys_are_400(http, urls, auth, key):
    response = await http.post(
        f"{urls.api}/api/generate",
        json={"prompt": "a cat"},
        headers=[*auth.items(), ("Idempotency-Key", key.encode())],
    )

    assert response.status_code == 400, response.text
    assert "Idempotency-Key" in response.json()["error"]


async def test_longest_key_is_accepted(http, urls, auth):
    headers = {**auth, "Idempotency-Key": "~" * 200}
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": "a cat"}, headers=headers)

    assert response.status_code == 201, response.text
