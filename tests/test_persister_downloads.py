"""How the persister downloads an output: an overall deadline besides the read timeouts, the bytes as the CDN
holds them (`Accept-Encoding: identity`), and never from https down to http. Run in the test process against the
simulator's CDN, a small CDN of the test's own, and the session's PostgreSQL and S3 server."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from common.db.pool import create_pool
from common.errors import OutputRejected, UpstreamUnavailable
from common.storage import open_s3
from services.persister.download import open_output, redirect_target
from services.persister.processor import Processor
from tests.helpers import listening
from tests.persister_kit import event_of, insert_generation, row, sim_prediction, stored_objects

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
async def impatient_processor(settings) -> AsyncIterator[Processor]:
    settings = dataclasses.replace(settings, download_deadline_s=1.0)
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        async with open_s3(settings) as s3, httpx.AsyncClient(trust_env=False) as http:
            yield Processor(settings, pool, s3, http)
    finally:
        await pool.close()


async def test_a_trickling_cdn_cannot_hold_a_download_past_its_deadline(http, urls, db, settings, impatient_processor):
    # Each chunk arrives well within the read timeout; the whole would take 10 s.
    prediction = await sim_prediction(http, urls.simulator, "trickle #sim:size=1000000 #sim:cdnslow=10")
    gid = await insert_generation(db, prediction["id"])
    started = time.monotonic()

    with pytest.raises(UpstreamUnavailable, match="did not finish within 1s"):
        await impatient_processor.handle(event_of(prediction))

    assert time.monotonic() - started < 8
    assert (await row(db, gid))["status"] == "queued"  # a transient failure: retried later, not failed
    assert await stored_objects(settings, gid) == {}


@pytest.fixture
async def own_cdn() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def image(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/x.png", image)
    async with listening(app) as url:
        yield url, seen


async def test_a_download_asks_for_the_bytes_as_stored(own_cdn):
    base, seen = own_cdn
    async with httpx.AsyncClient(trust_env=False) as client:
        async with open_output(client, f"{base}/x.png", ("127.0.0.1",), 1024) as out:
            body = b"".join([chunk async for chunk in out.chunks])

    assert body == PNG
    assert [headers.get("Accept-Encoding") for headers in seen] == ["identity"]


@pytest.mark.parametrize(
    ("current", "location", "expected"),
    [
        ("https://cdn.skytells.ai/a.png", "/b.png", "https://cdn.skytells.ai/b.png"),
        ("https://cdn.skytells.ai/a.png", "https://other.skytells.ai/b.png", "https://other.skytells.ai/b.png"),
        ("http://cdn.skytells.ai/a.png", "https://cdn.skytells.ai/a.png", "https://cdn.skytells.ai/a.png"),
        ("http://cdn.skytells.ai/a.png", "http://cdn.skytells.ai/b.png", "http://cdn.skytells.ai/b.png"),
    ],
)
def test_redirects_that_keep_or_gain_tls_are_followed(current, location, expected):
    assert redirect_target(current, location) == expected


@pytest.mark.parametrize(
    "location", ["http://cdn.skytells.ai/a.png", "//[cdn.skytells.ai/a.png", "ftp://cdn.skytells.ai/a.png"]
)
def test_a_redirect_from_https_to_plain_text_or_garbage_is_refused(location):
    with pytest.raises(OutputRejected):
        redirect_target("https://cdn.skytells.ai/a.png", location)


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.skytells.ai:abc/x.png",
        "https://cdn.skytells.ai:0/x.png",
        "https://[cdn.skytells.ai/x.png",
        f"https://{'a' * 64}.skytells.ai/x.png",
        "https://xn--zz.skytells.ai/x.png",
        f"https://{'.'.join(['abcdefghi'] * 30)}.skytells.ai/x.png",
    ],
)
async def test_unparseable_urls_are_refused_before_any_connection(url):
    async with httpx.AsyncClient(trust_env=False) as client:
        with pytest.raises(OutputRejected):
            async with open_output(client, url, ("*.skytells.ai",), 1024):
                pass
