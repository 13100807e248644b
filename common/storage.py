"""S3-compatible storage: one client per process, streaming multipart upload, the bucket's access policy, and
deleting a generation's objects."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterable, AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from common.errors import StorageUnavailable
from common.settings import OutputAccess, Settings

# S3's smallest allowed part; also bounds what an upload holds in memory at once.
PART_SIZE = 5 * 1024 * 1024
PREFIX = "generations/"
DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes


@asynccontextmanager
async def open_s3(settings: Settings) -> AsyncIterator[Any]:
    session = aioboto3.Session()
    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
    async with session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.aws_region,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        config=config,
    ) as client:
        yield client


def public_read_policy(bucket: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "PublicReadGenerations",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": ["s3:GetObject"],
                    "Resource": [f"arn:aws:s3:::{bucket}/{PREFIX}*"],
                }
            ],
        }
    )


# A persister killed mid-upload (SIGKILL, a lost machine) cannot abort its multipart upload; S3 keeps the parts,
# invisible and billed, until this rule removes them.
ABORT_INCOMPLETE_UPLOADS_RULE: dict[str, Any] = {
    "ID": "abort-incomplete-multipart-uploads",
    "Status": "Enabled",
    "Filter": {"Prefix": ""},
    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
}


async def ensure_bucket(client: Any, bucket: str, access: OutputAccess) -> None:
    """Create the bucket if missing, have incomplete uploads aborted, and let anyone read `generations/*` only
    with public outputs: with signed ones a policy left by a public run is removed, so only presigned URLs read."""
    try:
        await client.head_bucket(Bucket=bucket)
    except ClientError:
        await client.create_bucket(Bucket=bucket)
    if access is OutputAccess.PUBLIC:
        await client.put_bucket_policy(Bucket=bucket, Policy=public_read_policy(bucket))
    else:
        await client.delete_bucket_policy(Bucket=bucket)  # none to delete is a success too
    await client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [ABORT_INCOMPLETE_UPLOADS_RULE]}
    )


async def check_bucket(client: Any, bucket: str) -> None:
    try:
        await client.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as exc:
        raise StorageUnavailable(f"bucket {bucket} not reachable: {exc}") from exc


async def existing_keys(client: Any, bucket: str, prefix: str) -> set[str]:
    """Keys of the complete objects under `prefix` (an in-progress multipart upload is not an object yet)."""
    keys: set[str] = set()
    token: dict[str, str] = {}
    try:
        while True:
            page = await client.list_objects_v2(Bucket=bucket, Prefix=prefix, **token)
            keys.update(item["Key"] for item in page.get("Contents", ()))
            if not page.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": page["NextContinuationToken"]}
    except (BotoCoreError, ClientError) as exc:
        raise StorageUnavailable(f"listing {prefix} failed: {exc}") from exc


async def delete_generation_objects(client: Any, bucket: str, generation_id: Any, keys: Collection[str]) -> int:
    """Delete a generation's objects: `keys` and whatever else is stored under its id (a late or spooled output).
    Deleting a missing object succeeds; StorageUnavailable unless storage confirmed every deletion. Returns how
    many were deleted."""
    doomed = sorted(await existing_keys(client, bucket, f"{PREFIX}{generation_id}") | set(keys))
    try:
        for start in range(0, len(doomed), DELETE_BATCH):
            batch = doomed[start : start + DELETE_BATCH]
            answer = await client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
            )
            if answer.get("Errors"):
                failed = answer["Errors"][0]
                raise StorageUnavailable(f"deleting {failed.get('Key')} failed: {failed.get('Message')}")
    except (BotoCoreError, ClientError) as exc:
        raise StorageUnavailable(f"deleting the objects of {generation_id} failed: {exc}") from exc
    return len(doomed)


async def upload_stream(
    client: Any,
    bucket: str,
    key: str,
    chunks: AsyncIterable[bytes],
    content_type: str,
    part_size: int = PART_SIZE,
) -> int:
    """Stream `chunks` into `bucket/key`, holding at most one part in memory. Returns the size.

    Small objects go up in one PUT; larger ones as a multipart upload, aborted if anything fails (an
    exception from `chunks` itself, such as a size limit, propagates unchanged). Each part is written into a
    BytesIO that grows with what arrives and is handed over as it is: botocore reads a file for its checksum
    and signature in pieces, and aiohttp sends it in 64 KiB pieces, so no part-sized copy is ever made (raw
    bytes would be sliced and joined to the headers by aiohttp, twice the part again), and a small output
    costs its own size, not a part's.
    """
    part = io.BytesIO()
    total = 0
    upload_id: str | None = None
    parts: list[dict[str, Any]] = []

    async def send_part() -> None:
        nonlocal upload_id
        if upload_id is None:
            created = await client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)
            upload_id = created["UploadId"]
        number = len(parts) + 1
        part.seek(0)
        answer = await client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part)
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    try:
        async for chunk in chunks:
            total += len(chunk)
            rest = memoryview(chunk)
            while len(rest) > part_size - part.tell():  # the chunk overflows this part: fill it and send it
                room = part_size - part.tell()
                part.write(rest[:room])
                rest = rest[room:]
                await send_part()
                part = io.BytesIO()
            part.write(rest)
        if upload_id is None:
            part.seek(0)
            await client.put_object(Bucket=bucket, Key=key, Body=part, ContentType=content_type)
        else:
            if part.tell():
                await send_part()
            await client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
    except (BotoCoreError, ClientError) as exc:
        await _abort(client, bucket, key, upload_id)
        raise StorageUnavailable(f"storing {key} failed: {exc}") from exc
    except BaseException:
        await _abort(client, bucket, key, upload_id)
        raise
    return total


async def _abort(client: Any, bucket: str, key: str, upload_id: str | None) -> None:
    if upload_id is None:
        return
    try:
        # Shielded: when the upload was cancelled (a download deadline, a shutdown), the abort must still be sent.
        await asyncio.shield(client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
    except (BotoCoreError, ClientError, asyncio.CancelledError):
        pass  # the bucket's lifecycle rule or a later retry cleans up; the original error matters more
