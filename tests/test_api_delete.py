"""`DELETE /api/predictions/{id}`: a finished generation and its objects go, from every endpoint and the bucket;
an unfinished one is a 409; a storage failure is a 503 that changes nothing, so the call can be repeated; an
output stored after its generation was deleted is deleted too."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from common.resources import open_pool
from common.storage import open_s3
from devstack.processes import free_port
from devstack.tokens import issue_token
from services.persister.processor import Processor
from services.persister.spool import Spool
from tests.conftest import JWT_SECRET, Urls
from tests.helpers import wait_for_status
from tests.persister_kit import stored_objects


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _finished(http: httpx.AsyncClient, urls: Urls, auth: dict[str, str], prompt: str) -> dict[str, Any]:
    created = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=auth)
    assert created.status_code == 201, created.text
    return await wait_for_status(http, urls.api, created.json()["id"], auth)


async def test_a_finished_generation_and_its_objects_are_gone_for_good(http, urls, auth, settings):
    done = await _finished(http, urls, auth, "a paper boat #sim:outputs=2")
    gid = done["id"]
    assert done["status"] == "succeeded" and len(done["outputUrls"]) == 2
    assert len(await stored_objects(settings, uuid.UUID(gid))) == 2
    handed_out = done["outputUrls"]

    deleted = await http.delete(f"{urls.api}/api/predictions/{gid}", headers=auth)

    assert deleted.status_code == 204 and deleted.content == b""
    assert await stored_objects(settings, uuid.UUID(gid)) == {}
    for url in handed_out:  # a URL given out before, still within its lifetime, no longer reads anything
        assert (await http.get(url)).status_code == 404
    assert (await http.get(f"{urls.api}/api/predictions/{gid}", headers=auth)).status_code == 404
    assert (await http.get(f"{urls.api}/api/predictions/{gid}/events", headers=auth)).status_code == 404
    listed = (await http.get(f"{urls.api}/api/generations", headers=auth)).json()["items"]
    assert gid not in {item["id"] for item in listed}
    again = await http.delete(f"{urls.api}/api/predictions/{gid}", headers=auth)
    assert again.status_code == 404 and again.json() == {"error": "Not found"}


async def test_a_failed_generation_without_outputs_is_deleted_too(http, urls, auth):
    done = await _finished(http, urls, auth, "doomed #sim:fail")
    assert done["status"] == "failed"

    assert (await http.delete(f"{urls.api}/api/predictions/{done['id']}", headers=auth)).status_code == 204
    assert (await http.get(f"{urls.api}/api/predictions/{done['id']}", headers=auth)).status_code == 404


async def test_an_unfinished_generation_is_a_409_and_stays(http, urls, auth):
    created = (await http.post(f"{urls.api}/api/generate", json={"prompt": "slow #sim:delay=30"}, headers=auth)).json()

    refused = await http.delete(f"{urls.api}/api/predictions/{created['id']}", headers=auth)

    assert refused.status_code == 409 and "cancel it first" in refused.json()["error"]
    assert (await http.get(f"{urls.api}/api/predictions/{created['id']}", headers=auth)).status_code == 200
    await http.post(f"{urls.api}/api/predictions/{created['id']}/cancel", headers=auth)


async def test_another_users_unknown_and_malformed_ids_are_the_same_404(http, urls, auth):
    done = await _finished(http, urls, auth, "mine #sim:delay=0.1")
    stranger = {"Authorization": f"Bearer {issue_token(JWT_SECRET, f'user-{uuid.uuid4().hex[:8]}')}"}

    answers = [
        await http.delete(f"{urls.api}/api/predictions/{done['id']}", headers=stranger),
        await http.delete(f"{urls.api}/api/predictions/{uuid.uuid4()}", headers=auth),
        await http.delete(f"{urls.api}/api/predictions/not-an-id", headers=auth),
    ]

    assert [(a.status_code, a.json()) for a in answers] == [(404, {"error": "Not found"})] * 3
    assert (await http.delete(f"{urls.api}/api/predictions/{done['id']}")).status_code == 401
    assert (await http.get(f"{urls.api}/api/predictions/{done['id']}", headers=auth)).status_code == 200


async def test_storage_down_is_a_503_that_changes_nothing_and_the_repeat_deletes(
    services, http, urls, auth, settings, db
):
    done = await _finished(http, urls, auth, "kept through an outage")
    gid = done["id"]
    objects = await stored_objects(settings, uuid.UUID(gid))
    row = dict(await db.fetchrow("SELECT * FROM generations WHERE id = $1::uuid", gid))
    # A replica whose storage does not answer: its connections are refused, as when the S3 server is down.
    port = free_port()
    dead = {"API_PORT": str(port), "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    replica = services.start_service("api", env=dead, label="api-storage-down")
    try:
        refused = await http.delete(f"http://127.0.0.1:{port}/api/predictions/{gid}", headers=auth)
    finally:
        replica.stop()

    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert "retry" in refused.json()["error"]
    assert dict(await db.fetchrow("SELECT * FROM generations WHERE id = $1::uuid", gid)) == row
    assert await stored_objects(settings, uuid.UUID(gid)) == objects
    assert (await http.get(f"{urls.api}/api/predictions/{gid}", headers=auth)).json()["status"] == "succeeded"

    assert (await http.delete(f"{urls.api}/api/predictions/{gid}", headers=auth)).status_code == 204
    assert await stored_objects(settings, uuid.UUID(gid)) == {}


async def test_outputs_stored_after_their_generation_was_deleted_are_deleted_too(settings, tmp_path, db):
    """The spool puts an output once storage is back; if the owner deleted the (ended) generation meanwhile,
    the persister deletes what it put instead of leaving an object no generation holds."""
    gone = uuid.uuid4()
    key = f"generations/{gone}.png"
    spool = Spool(tmp_path, max_bytes=10_000, output_max_bytes=1_000)
    spool.open()
    async with spool.writing(gone) as writer:
        await writer.add(key, "image/png", _chunks(b"\x89PNG\r\n\x1a\n kept while storage was down"))
    [entry] = spool.entries()
    pool = await open_pool(settings)
    try:
        async with open_s3(settings) as s3, httpx.AsyncClient() as client:
            await Processor(settings, pool, s3, client, spool=spool).settle_spooled(entry)
    finally:
        await pool.close()
        spool.close()

    assert not await db.fetchval("SELECT EXISTS (SELECT 1 FROM generations WHERE id = $1)", gone)
    assert await stored_objects(settings, gone) == {}
