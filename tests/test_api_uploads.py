"""Reference images: `POST /api/uploads` stores the raw bytes of a PNG, JPEG or WebP (known by its bytes) under
`uploads/`, at most UPLOAD_MAX_BYTES; `upload:<id>` in a generation's input reaches Skytells as a presigned URL
of it, only for its owner, and the simulator gets exactly the uploaded bytes."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from PIL import Image

from common.storage import open_s3
from devstack.processes import free_port
from devstack.stack import Stack
from devstack.tokens import issue_token
from tests.conftest import JWT_SECRET
from tests.helpers import wait_for_status


def _image(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buffer, fmt)
    return buffer.getvalue()


async def _upload(http, urls, auth, data: bytes, content_type: str = "text/plain"):
    return await http.post(f"{urls.api}/api/uploads", content=data, headers={**auth, "Content-Type": content_type})


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
async def test_an_upload_is_stored_privately_with_its_type_from_its_bytes(
    http, urls, auth, user_id, db, settings, fmt, content_type
):
    data = _image(fmt)
    response = await _upload(http, urls, auth, data)  # the declared type is ignored

    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {"id": body["id"], "ref": f"upload:{body['id']}", "contentType": content_type, "bytes": len(data)}
    row = await db.fetchrow("SELECT * FROM uploads WHERE id = $1", uuid.UUID(body["id"]))
    assert row["user_id"] == user_id and row["object_key"].startswith("uploads/")
    async with open_s3(settings) as s3:
        stored = await s3.get_object(Bucket=settings.s3_bucket, Key=row["object_key"])
        async with stored["Body"] as stream:
            assert await stream.read() == data
        assert stored["ContentType"] == content_type


@pytest.mark.parametrize("data", [b"", b"GIF89a" + b"\x00" * 40, b"<html>not an image</html>", b"\x89PN"])
async def test_anything_but_a_png_jpeg_or_webp_is_a_400(http, urls, auth, data):
    response = await _upload(http, urls, auth, data, "image/png")
    assert response.status_code == 400 and "PNG, JPEG or WebP" in response.json()["error"]


async def test_an_upload_needs_a_token(http, urls):
    assert (await http.post(f"{urls.api}/api/uploads", content=_image("PNG"))).status_code == 401


@pytest.fixture(scope="module")
def small_api(services: Stack) -> Iterator[str]:
    port = free_port()
    process = services.start_service(
        "api", env={"API_PORT": str(port), "UPLOAD_MAX_BYTES": "2000"}, label="api-small-uploads"
    )
    yield f"http://127.0.0.1:{port}"
    process.stop()


async def test_an_upload_over_the_limit_is_a_413_declared_or_not(http, small_api, auth):
    large = _image("PNG") + b"\x00" * 3000

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(large), 500):
            yield large[start : start + 500]

    declared = await http.post(f"{small_api}/api/uploads", content=large, headers=auth)
    streamed = await http.post(f"{small_api}/api/uploads", content=chunks(), headers=auth)
    fits = await http.post(f"{small_api}/api/uploads", content=_image("PNG"), headers=auth)
    assert declared.status_code == 413 and "error" in declared.json()
    assert streamed.status_code == 413
    assert fits.status_code == 201


async def test_a_reference_image_round_trips_to_skytells(http, urls, auth):
    data = _image("JPEG", (64, 64))
    ref = (await _upload(http, urls, auth, data)).json()["ref"]
    prompt = f"like this {uuid.uuid4().hex}"
    body = {"prompt": prompt, "model": "truefusion-2.0", "input": {"image": ref, "image_strength": 0.4}}
    response = await http.post(f"{urls.api}/api/generate", json=body, headers=auth)

    assert response.status_code == 201, response.text
    assert response.json()["input"] == {"image": ref, "image_strength": 0.4}  # as the request held it
    (record,) = [r for r in (await http.get(f"{urls.simulator}/_sim/predictions")).json() if r["prompt"] == prompt]
    assert base64.b64decode(record["imageBytes"]) == data
    sent = record["input"]["image"]
    assert sent.startswith("http") and "/uploads/" in sent and "X-Amz-Signature=" in sent
    done = await wait_for_status(http, urls.api, response.json()["id"], auth)
    assert done["status"] == "succeeded" and done["input"]["image"] == ref


async def test_another_users_or_an_unknown_upload_is_a_400_and_reaches_no_one(http, urls, auth, db, user_id):
    stranger = {"Authorization": f"Bearer {issue_token(JWT_SECRET, f'stranger-{uuid.uuid4().hex}')}"}
    theirs = (await _upload(http, urls, stranger, _image("PNG"))).json()["ref"]
    prompt = f"not mine {uuid.uuid4().hex}"
    for ref in (theirs, f"upload:{uuid.uuid4()}", "upload:not-an-id"):
        body = {"prompt": prompt, "model": "truefusion-2.0", "input": {"image": ref}}
        response = await http.post(f"{urls.api}/api/generate", json=body, headers=auth)
        assert response.status_code == 400
        assert response.json()["error"] == "Invalid input: image: no such upload"
    assert await db.fetchval("SELECT count(*) FROM generations WHERE user_id = $1", user_id) == 0
    assert [r for r in (await http.get(f"{urls.simulator}/_sim/predictions")).json() if r["prompt"] == prompt] == []
