"""Multipart uploads never linger: the bucket the local stack makes aborts incomplete ones after a day, and an
upload that fails or is cut short is aborted at once. Against the session's S3 server (moto in server mode)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from common.errors import OutputRejected
from common.storage import PART_SIZE, open_s3, upload_stream


async def test_the_local_stack_makes_the_bucket_abort_incomplete_uploads_after_a_day(settings):
    async with open_s3(settings) as s3:
        lifecycle = await s3.get_bucket_lifecycle_configuration(Bucket=settings.s3_bucket)

    rules = [rule for rule in lifecycle["Rules"] if rule["Status"] == "Enabled"]
    assert [rule["AbortIncompleteMultipartUpload"] for rule in rules] == [{"DaysAfterInitiation": 1}]
    assert rules[0]["Filter"] == {"Prefix": ""}  # every key, not only some


async def _parts_then(failure: BaseException | None, pause: float = 0) -> AsyncIterator[bytes]:
    """Two parts' worth of bytes (so a multipart upload is under way), then the failure or a long pause."""
    for _ in range(2 * PART_SIZE // (1024 * 1024) + 1):
        yield b"\x89PNG" + b"\x00" * (1024 * 1024 - 4)
    if failure is not None:
        raise failure
    await asyncio.sleep(pause)


async def _odd_chunks(size: int, chunk: int) -> AsyncIterator[bytes]:
    """`size` bytes in pieces that never line up with a part's end, each a pattern of its own."""
    sent = 0
    while sent < size:
        take = min(chunk, size - sent)
        yield bytes([sent // chunk % 251]) * take
        sent += take


async def test_a_multipart_upload_stores_every_byte_in_full_parts_but_the_last(settings):
    size = 2 * PART_SIZE + 12345
    expected = b"".join([piece async for piece in _odd_chunks(size, 777_777)])
    key = f"generations/{uuid.uuid4()}.png"
    async with open_s3(settings) as s3:
        # Parts go up as files, never as raw bytes (aiohttp would warn, and copy each part twice).
        assert await upload_stream(s3, settings.s3_bucket, key, _odd_chunks(size, 777_777), "image/png") == size
        stored = await s3.get_object(Bucket=settings.s3_bucket, Key=key)
        body = await stored["Body"].read()
        first = await s3.head_object(Bucket=settings.s3_bucket, Key=key, PartNumber=1)

    assert body == expected
    assert stored["ContentType"] == "image/png"
    assert stored["ETag"].strip('"').endswith("-3")  # a multipart object's ETag ends in -<parts>
    assert first["ContentLength"] == PART_SIZE


async def test_an_output_of_exactly_one_part_goes_up_in_one_put(settings):
    key = f"generations/{uuid.uuid4()}.png"
    async with open_s3(settings) as s3:
        size = await upload_stream(s3, settings.s3_bucket, key, _odd_chunks(PART_SIZE, 65_536), "image/png")
        head = await s3.head_object(Bucket=settings.s3_bucket, Key=key)

    assert size == head["ContentLength"] == PART_SIZE
    assert "-" not in head["ETag"]  # a multipart object's ETag ends in -<parts>


async def _uploads_of(s3, settings, key: str) -> list[dict]:
    listing = await s3.list_multipart_uploads(Bucket=settings.s3_bucket, Prefix=key)
    return list(listing.get("Uploads", ()))


async def test_an_upload_whose_source_fails_is_aborted_at_once(settings):
    key = f"generations/{uuid.uuid4()}.png"
    async with open_s3(settings) as s3:
        with pytest.raises(OutputRejected, match="too large"):
            await upload_stream(s3, settings.s3_bucket, key, _parts_then(OutputRejected("too large")), "image/png")

        assert await _uploads_of(s3, settings, key) == []
        assert "Contents" not in await s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=key)


async def test_an_upload_cut_short_by_a_deadline_is_aborted_too(settings):
    key = f"generations/{uuid.uuid4()}.png"
    async with open_s3(settings) as s3:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await upload_stream(s3, settings.s3_bucket, key, _parts_then(None, pause=60), "image/png")

        assert await _uploads_of(s3, settings, key) == []
