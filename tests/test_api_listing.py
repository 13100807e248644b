"""`GET /api/generations`: newest first, an opaque keyset cursor that new inserts never shift, only the
caller's generations, and 400 for a bad limit or cursor."""

from __future__ import annotations

import base64

import pytest

from tests.helpers import bearer


async def _create(http, urls, auth, prompt: str) -> str:
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def _page(http, urls, auth, **params) -> dict:
    response = await http.get(f"{urls.api}/api/generations", params=params, headers=auth)
    assert response.status_code == 200, response.text
    return response.json()


async def test_pages_walk_newest_first_and_inserts_do_not_shift_them(http, urls, auth, user_id):
    ids = [await _create(http, urls, auth, f"picture {n}") for n in range(5)]
    someone_else = bearer(user_id + "-other")
    await _create(http, urls, someone_else, "not yours")

    first = await _page(http, urls, auth, limit=2)
    newer = await _create(http, urls, auth, "inserted between pages")
    second = await _page(http, urls, auth, limit=2, cursor=first["nextCursor"])
    third = await _page(http, urls, auth, limit=2, cursor=second["nextCursor"])

    served = [item["id"] for page in (first, second, third) for item in page["items"]]
    assert served == list(reversed(ids))
    assert third["nextCursor"] is None
    everything = await _page(http, urls, auth)
    assert [item["id"] for item in everything["items"]] == [newer, *reversed(ids)]
    assert everything["nextCursor"] is None
    assert set(everything["items"][0]) >= {"id", "status", "outputUrl", "createdAt"}


async def test_exact_page_boundary_has_no_next_cursor(http, urls, auth):
    for n in range(2):
        await _create(http, urls, auth, f"pair {n}")

    page = await _page(http, urls, auth, limit=2)

    assert len(page["items"]) == 2 and page["nextCursor"] is None


async def test_new_user_has_an_empty_list(http, urls, auth):
    assert await _page(http, urls, auth) == {"items": [], "nextCursor": None}


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "params,message",
    [
        ({"limit": "0"}, "Invalid limit"),
        ({"limit": "101"}, "Invalid limit"),
        ({"limit": "ten"}, "Invalid limit"),
        ({"limit": "-1"}, "Invalid limit"),
        ({"limit": "1.5"}, "Invalid limit"),
        ({"limit": ""}, "Invalid limit"),
        ({"cursor": "garbage!"}, "Invalid cursor"),
        ({"cursor": _b64("2024-01-01T00:00:00+00:00|not-a-uuid")}, "Invalid cursor"),
        ({"cursor": _b64("2024-01-01T00:00:00|00000000-0000-0000-0000-000000000000")}, "Invalid cursor"),
        ({"cursor": _b64("0001-01-01T00:00:00+14:00|00000000-0000-0000-0000-000000000000")}, "Invalid cursor"),
        ({"cursor": "\u00e9t\u00e9"}, "Invalid cursor"),
    ],
)
async def test_bad_limit_or_cursor_is_400(http, urls, auth, params, message):
    response = await http.get(f"{urls.api}/api/generations", params=params, headers=auth)

    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(message)
