"""`POST /api/predictions/{id}/cancel`: through Skytells' cancel endpoint, `canceled` once it agrees; 409 once
finished; 404 exactly as for GET."""

from __future__ import annotations

from tests.helpers import wait_for_status


async def _create(http, urls, auth, prompt: str) -> dict:
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


async def test_cancel_goes_through_skytells_and_ends_canceled(http, urls, auth, db):
    created = await _create(http, urls, auth, "a long exposure #sim:delay=30")

    response = await http.post(f"{urls.api}/api/predictions/{created['id']}/cancel", headers=auth)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == created["id"] and body["status"] == "canceled" and body["completedAt"] is not None
    prediction_id = await db.fetchval("SELECT prediction_id FROM generations WHERE id = $1::uuid", created["id"])
    sim = (await http.get(f"{urls.simulator}/_sim/predictions")).json()
    assert [p["status"] for p in sim if p["id"] == prediction_id] == ["cancelled"]
    again = await http.post(f"{urls.api}/api/predictions/{created['id']}/cancel", headers=auth)
    assert again.status_code == 409 and "already finished" in again.json()["error"]
    later = await http.get(f"{urls.api}/api/predictions/{created['id']}", headers=auth)
    assert later.json()["status"] == "canceled"


async def test_cancel_after_success_is_409_and_changes_nothing(http, urls, auth):
    created = await _create(http, urls, auth, "a quick sketch")
    done = await wait_for_status(http, urls.api, created["id"], auth)
    assert done["status"] == "succeeded"

    response = await http.post(f"{urls.api}/api/predictions/{created['id']}/cancel", headers=auth)

    assert response.status_code == 409
    after = await http.get(f"{urls.api}/api/predictions/{created['id']}", headers=auth)
    assert after.json() == done


async def test_cancel_without_a_token_is_401(http, urls, auth):
    created = await _create(http, urls, auth, "guarded #sim:delay=5")

    response = await http.post(f"{urls.api}/api/predictions/{created['id']}/cancel")

    assert response.status_code == 401
