"""The simulator's list of predictions and its lost create answers, as Studio's reconciler and API meet them."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import httpx
import pytest

from tests.persister_kit import SIM_KEY


async def _create(http: httpx.AsyncClient, sim: str, prompt: str) -> httpx.Response:
    return await http.post(
        f"{sim}/v1/predictions",
        headers=SIM_KEY,
        json={
            "model": "truefusion-pro",
            "input": {"prompt": f"{prompt} #sim:delay=0.05 #sim:drop"},
            "webhook": {"url": f"https://studio.example/hook?generation={prompt}", "events": ["completed"]},
        },
    )


async def test_the_list_is_newest_first_by_page_with_each_webhook(http, sim):
    created = [(await _create(http, sim, f"listed-{uuid.uuid4().hex}")).json() for _ in range(3)]
    made = [p["id"] for p in created]
    # The days the predictions were made on, not today's: a run that crosses midnight made them yesterday.
    days = {"from": created[0]["created_at"][:10], "to": created[-1]["created_at"][:10]}

    first = await http.get(f"{sim}/v1/predictions", headers=SIM_KEY, params={"per_page": 2, **days})
    second = await http.get(f"{sim}/v1/predictions", headers=SIM_KEY, params={"page": 2, "per_page": 2, **days})

    assert first.status_code == second.status_code == 200
    page_one, page_two = first.json(), second.json()
    assert [p["id"] for p in page_one["data"]] == made[::-1][:2]
    assert page_two["data"][0]["id"] == made[0]
    assert page_one["pagination"]["per_page"] == 2 and page_one["pagination"]["last_page"] >= 2
    assert page_one["data"][0]["webhook"]["url"].startswith("https://studio.example/hook?generation=listed-")
    before = (datetime.fromisoformat(created[0]["created_at"]) - timedelta(days=400)).date().isoformat()
    old = await http.get(f"{sim}/v1/predictions", headers=SIM_KEY, params={"from": before, "to": before})
    assert old.json()["data"] == []


@pytest.mark.parametrize("params", [{"per_page": "51"}, {"page": "0"}, {"from": "yesterday"}])
async def test_a_bad_list_query_is_a_422(http, sim, params):
    answer = await http.get(f"{sim}/v1/predictions", headers=SIM_KEY, params=params)
    assert answer.status_code == 422 and answer.json()["status"] is False


@pytest.mark.parametrize("answer", ["cut", "504"])
async def test_a_lost_answer_still_makes_the_prediction(http, sim, answer):
    marker = f"lost-{uuid.uuid4().hex}"
    body = {"model": "truefusion-pro", "input": {"prompt": f"{marker} #sim:answer={answer} #sim:delay=0.05"}}
    if answer == "cut":
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(f"{sim}/v1/predictions", headers=SIM_KEY, json=body)
    else:
        response = await http.post(f"{sim}/v1/predictions", headers=SIM_KEY, json=body)
        assert response.status_code == 504 and "json" not in response.headers["content-type"]
    made = [p for p in (await http.get(f"{sim}/_sim/predictions")).json() if marker in (p["prompt"] or "")]
    assert len(made) == 1
