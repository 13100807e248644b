"""Who can read stored outputs: private by default (an anonymous GET is refused, every URL Studio hands out is
presigned by botocore and fetches the exact bytes until it expires), `public` on request; the mode changes the
URLs given out, never the stored data."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from common.presign import MAX_EXPIRES_S, OutputLinks, Presigner
from common.settings import OutputAccess, Settings
from common.storage import ensure_bucket, open_s3
from devstack.moto_server import presigned_url_expired
from devstack.processes import free_port
from studio_cli.sse import read_events
from tests.helpers import wait_for_status


def _query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def test_presigned_urls_are_sigv4_path_style_against_the_address_clients_reach():
    settings = Settings.from_env(
        {
            "S3_ENDPOINT_URL": "http://minio:9000",
            "S3_PUBLIC_ENDPOINT_URL": "http://localhost:9000",
            "S3_BUCKET": "bucket-1",
        }
    )

    url = Presigner.from_settings(settings).url("generations/x.png", 120)

    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "localhost:9000", "/bucket-1/generations/x.png")
    query = _query(url)
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Expires"] == "120"
    assert query["X-Amz-Credential"].startswith(f"{settings.aws_access_key_id}/") and query["X-Amz-Signature"]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_url_is_reused_briefly_and_signed_so_that_it_lasts_the_whole_ttl():
    clock = _Clock()
    settings = Settings.from_env({"OUTPUT_URL_TTL_S": "600"})
    links = OutputLinks(OutputAccess.SIGNED, "", Presigner.from_settings(settings), 600, clock=clock)

    first = links.url("generations/a.png")
    clock.now += 59  # within a tenth of the lifetime: the same URL, not signed again
    assert links.url("generations/a.png") is first
    assert int(_query(first)["X-Amz-Expires"]) == 660  # so even the last one handed out lasts 600 s
    clock.now += 2
    again = links.url("generations/a.png")
    assert again is not first  # signed anew (within one second its text may be the same)
    assert links.url("generations/b.png") != again


def test_the_longest_ttl_stays_within_s3s_seven_days():
    settings = Settings.from_env({"OUTPUT_URL_TTL_S": str(MAX_EXPIRES_S)})
    url = OutputLinks.from_settings(settings).url("generations/a.png")
    assert int(_query(url)["X-Amz-Expires"]) == MAX_EXPIRES_S


def test_public_urls_are_the_public_base_and_the_key():
    settings = Settings.from_env({"S3_OUTPUT_ACCESS": "public", "S3_PUBLIC_BASE_URL": "https://img.example.com/b"})
    assert OutputLinks.from_settings(settings).url("generations/a.png") == "https://img.example.com/b/generations/a.png"


def test_the_local_s3_judges_expiry_as_s3_does():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    query = "X-Amz-Date=20260102T030405Z&X-Amz-Expires=60&X-Amz-Signature=x"
    assert not presigned_url_expired(query, now + timedelta(seconds=60))
    assert presigned_url_expired(query, now + timedelta(seconds=61))
    assert presigned_url_expired("X-Amz-Date=yesterday&X-Amz-Expires=60", now)
    assert not presigned_url_expired("", now)


async def _put(settings: Settings, key: str, body: bytes) -> None:
    async with open_s3(settings) as s3:
        await s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=body, ContentType="image/png")


async def test_by_default_an_anonymous_get_is_refused_and_an_expired_url_too(settings, http):
    key = f"generations/{uuid.uuid4()}.png"
    body = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes
    await _put(settings, key, body)

    anonymous = await http.get(f"{settings.s3_public_base_url}/{key}")
    presigner = Presigner.from_settings(settings)
    # X-Amz-Date is truncated to the second, so a URL signed for one second may be stale at once: the fresh
    # fetch uses a URL with a lifetime to spare, the expiry check one signed for a second, read 2.1 s later.
    fresh = await http.get(presigner.url(key, 60))
    short = presigner.url(key, 1)
    await asyncio.sleep(2.1)
    expired = await http.get(short)

    assert anonymous.status_code == 403
    assert fresh.status_code == 200 and fresh.content == body
    assert expired.status_code == 403 and b"Request has expired" in expired.content


async def _generation_stream_first(http: httpx.AsyncClient, api: str, gid: str, auth: dict[str, str]) -> Any:
    async with http.stream("GET", f"{api}/api/predictions/{gid}/events", headers=auth) as response:
        async for event in read_events(response):
            return event.json()
    raise AssertionError("no event")


async def test_every_url_handed_out_fetches_the_exact_bytes_and_switching_modes_keeps_the_data(
    services, urls, settings, http, auth, db
):
    created = (await http.post(f"{urls.api}/api/generate", json={"prompt": "a quiet harbour"}, headers=auth)).json()
    done = await wait_for_status(http, urls.api, created["id"], auth)
    assert done["status"] == "succeeded", done
    key = f"generations/{created['id']}.png"
    async with open_s3(settings) as s3:
        stored = await (await s3.get_object(Bucket=settings.s3_bucket, Key=key))["Body"].read()
    row_before = dict(await db.fetchrow("SELECT * FROM generations WHERE id = $1::uuid", created["id"]))

    # Signed (the default): the answer, the list, the stream and Prefer: wait each carry a presigned URL.
    listed = (await http.get(f"{urls.api}/api/generations", headers=auth)).json()["items"][0]
    streamed = await _generation_stream_first(http, urls.api, created["id"], auth)
    handed_out = [done["outputUrl"], listed["outputUrl"], streamed["outputUrl"]]
    for url in handed_out:
        assert int(_query(url)["X-Amz-Expires"]) >= settings.output_url_ttl_s
        fetched = await http.get(url)
        assert fetched.status_code == 200 and fetched.content == stored, url
    assert (await http.get(f"{settings.s3_public_base_url}/{key}")).status_code == 403

    # Public: a replica started in that mode answers plain URLs once the bucket lets anyone read generations/*.
    port = free_port()
    public_env = {"API_PORT": str(port), "S3_OUTPUT_ACCESS": "public"}
    replica = services.start_service("api", env=public_env, label="api-public")
    try:
        async with open_s3(settings) as s3:
            await ensure_bucket(s3, settings.s3_bucket, OutputAccess.PUBLIC)
            await s3.put_object(Bucket=settings.s3_bucket, Key=f"uploads/{uuid.uuid4()}.png", Body=b"private")
            upload_key = (await s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix="uploads/"))["Contents"][0]["Key"]
        public = (await http.get(f"http://127.0.0.1:{port}/api/predictions/{created['id']}", headers=auth)).json()
        assert public["outputUrl"] == f"{settings.s3_public_base_url}/{key}"
        fetched = await http.get(public["outputUrl"])
        assert fetched.status_code == 200 and fetched.content == stored
        # Uploads stay private even then.
        assert (await http.get(f"{settings.s3_public_base_url}/{upload_key}")).status_code == 403
    finally:
        replica.stop()
        async with open_s3(settings) as s3:  # back to signed: the policy the public run left is removed
            await ensure_bucket(s3, settings.s3_bucket, OutputAccess.SIGNED)

    assert (await http.get(f"{settings.s3_public_base_url}/{key}")).status_code == 403
    again = (await http.get(f"{urls.api}/api/predictions/{created['id']}", headers=auth)).json()
    assert (await http.get(again["outputUrl"])).content == stored
    assert dict(await db.fetchrow("SELECT * FROM generations WHERE id = $1::uuid", created["id"])) == row_before


async def test_prefer_wait_answers_with_a_presigned_url(urls, http, auth):
    response = await http.post(
        f"{urls.api}/api/generate", json={"prompt": "quick #sim:delay=0.1"}, headers={**auth, "Prefer": "wait=20"}
    )
    body = response.json()
    assert body["status"] == "succeeded", body
    assert "X-Amz-Signature" in _query(body["outputUrl"])
    assert (await http.get(body["outputUrl"])).content.startswith(b"\x89PNG")


def test_the_page_may_load_images_from_where_the_handed_out_urls_point():
    env = {"S3_ENDPOINT_URL": "http://minio:9000", "S3_PUBLIC_ENDPOINT_URL": "http://localhost:9000"}
    public = {**env, "S3_OUTPUT_ACCESS": "public", "S3_PUBLIC_BASE_URL": "https://img.example.com/b"}
    aws = {"S3_ENDPOINT_URL": "", "AWS_REGION": "eu-west-1"}

    signed_links = OutputLinks.from_settings(Settings.from_env(env))
    aws_links = OutputLinks.from_settings(Settings.from_env(aws))

    assert signed_links.origin == "http://localhost:9000"
    assert OutputLinks.from_settings(Settings.from_env(public)).origin == "https://img.example.com"
    aws_url = urlsplit(aws_links.url("generations/a.png"))
    assert aws_links.origin == f"https://{aws_url.netloc}" and aws_url.netloc.endswith("amazonaws.com")
