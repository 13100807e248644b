"""One generation through every real part: API -> simulator -> gateway -> RabbitMQ -> persister -> S3."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from tests.conftest import Urls
from tests.helpers import wait_for_status


async def _generate(http: httpx.AsyncClient, urls: Urls, auth: dict[str, str], prompt: str) -> dict:
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=auth)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["Location"] == f"/api/predictions/{body['id']}"
    assert body["status"] in ("queued", "processing")
    return body


async def test_generation_succeeds_and_s3_holds_the_exact_bytes(http, urls, auth, db):
    created = await _generate(http, urls, auth, "a lighthouse at dawn")

    done = await wait_for_status(http, urls.api, created["id"], auth)

    assert done["status"] == "succeeded", done
    assert done["error"] is None and done["completedAt"] is not None
    url = urlsplit(done["outputUrl"])
    assert url.path.endswith(f"/generations/{created['id']}.png")
    assert "X-Amz-Signature" in parse_qs(url.query)  # private by default: a presigned URL
    assert done["outputUrls"] == [done["outputUrl"]]
    prediction_id = await db.fetchval("SELECT prediction_id FROM generations WHERE id = $1::uuid", created["id"])
    served = await http.get(f"{urls.simulator}/cdn/{prediction_id}/0.png")
    stored = await http.get(done["outputUrl"])
    assert served.status_code == 200 and stored.status_code == 200
    assert stored.content == served.content
    assert stored.content.startswith(b"\x89PNG\r\n\x1a\n")
    anonymous = await http.get(url._replace(query="").geturl())
    assert anonymous.status_code == 403


async def test_failed_prediction_ends_failed_with_skytells_message(http, urls, auth):
    created = await _generate(http, urls, auth, "a broken dream #sim:fail")

    done = await wait_for_status(http, urls.api, created["id"], auth)

    assert done["status"] == "failed"
    assert done["error"] == "Simulated failure: the model could not generate this image"
    assert done["outputUrl"] is None and done["outputUrls"] == []


async def test_envelope_and_duplicate_callbacks_store_once(http, urls, auth, db):
    created = await _generate(http, urls, auth, "twin moons #sim:envelope #sim:dup=3")

    done = await wait_for_status(http, urls.api, created["id"], auth)

    assert done["status"] == "succeeded"
    stored = await http.get(done["outputUrl"])
    assert stored.status_code == 200 and stored.content.startswith(b"\x89PNG")
