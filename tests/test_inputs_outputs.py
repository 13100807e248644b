"""What a generation asked for is what is stored: several images of the asked size and format, the same bytes for
the same seed; Skytells' metrics in the generation; and the month's usage, which adds up and survives the
deletion of generations."""

from __future__ import annotations

import io
import uuid
from urllib.parse import urlsplit

from PIL import Image

from tests.helpers import wait_for_status
from tests.persister_kit import stored_objects

ASKED = {"width": 512, "height": 768, "num_outputs": 2, "seed": 7, "output_format": "jpeg"}


async def _generate(http, urls, auth, prompt: str, options: dict | None = None, model: str | None = None) -> dict:
    body: dict = {"prompt": prompt, "input": options or {}}
    if model:
        body["model"] = model
    response = await http.post(f"{urls.api}/api/generate", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return await wait_for_status(http, urls.api, response.json()["id"], auth)


async def test_two_512_by_768_jpegs_are_stored_and_the_same_seed_gives_the_same_bytes(http, urls, auth, settings):
    prompt = f"two harbours {uuid.uuid4().hex}"
    first = await _generate(http, urls, auth, prompt, ASKED)
    again = await _generate(http, urls, auth, prompt, ASKED)
    other = await _generate(http, urls, auth, prompt, {**ASKED, "seed": 8})

    stored = {}
    for generation in (first, again, other):
        assert generation["status"] == "succeeded", generation
        assert generation["input"] == (ASKED if generation is not other else {**ASKED, "seed": 8})
        gid = generation["id"]
        objects = await stored_objects(settings, uuid.UUID(gid))
        assert sorted(objects) == [f"generations/{gid}-1.jpg", f"generations/{gid}.jpg"]
        assert [urlsplit(url).path.rsplit("/", 1)[1] for url in generation["outputUrls"]] == [
            f"{gid}.jpg",
            f"{gid}-1.jpg",
        ]
        images = [objects[f"generations/{gid}.jpg"], objects[f"generations/{gid}-1.jpg"]]
        for data, content_type in images:
            assert content_type == "image/jpeg"
            with Image.open(io.BytesIO(data)) as picture:
                assert (picture.format, picture.size) == ("JPEG", (512, 768))
                picture.load()
        stored[gid] = [data for data, _ in images]
    assert stored[first["id"]] == stored[again["id"]]
    assert stored[first["id"]][0] != stored[first["id"]][1]
    assert stored[other["id"]] != stored[first["id"]]
    assert first["metrics"]["creditsUsed"] == 0.06 and first["metrics"]["predictTime"] > 0


async def test_the_months_usage_adds_up_and_survives_deleted_generations(http, urls, auth, user_id, db):
    before = (await http.get(f"{urls.api}/api/me", headers=auth)).json()["usage"]
    assert before["generations"] == before["images"] == 0 and before["creditsUsed"] == 0
    # A duplicated completion callback counts once; a failed generation counts as made, not as succeeded.
    three = await _generate(http, urls, auth, "three #sim:dup=3", {"num_outputs": 3})
    one = await _generate(http, urls, auth, "one", model="truefusion-edge")
    failed = await _generate(http, urls, auth, "none #sim:fail")
    assert [three["status"], one["status"], failed["status"]] == ["succeeded", "succeeded", "failed"]
    assert three["metrics"]["creditsUsed"] == 0.09 and failed["metrics"] == {"predictTime": None, "creditsUsed": None}

    usage = (await http.get(f"{urls.api}/api/me", headers=auth)).json()["usage"]
    assert usage == {"month": usage["month"], "generations": 3, "succeeded": 2, "images": 4, "creditsUsed": 0.12}
    assert usage["month"] == str(await db.fetchval("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')"))

    await db.execute("DELETE FROM generations WHERE user_id = $1", user_id)
    assert (await http.get(f"{urls.api}/api/me", headers=auth)).json()["usage"] == usage
