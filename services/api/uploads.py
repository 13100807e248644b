"""Reference images: `POST /api/uploads` stores one, and a generation's `input` names it `upload:<id>`.

The body is the raw image; its type comes from its own first bytes (PNG, JPEG or WebP; `Content-Type` is
ignored), and it is read only up to `UPLOAD_MAX_BYTES` (413 beyond, declared or not). It is stored private under
`uploads/` in `S3_BUCKET`, and a row records its owner. In what Studio sends to Skytells, an `"upload:<id>"`
value of the caller's own upload becomes a presigned URL of it, valid `OUTPUT_URL_TTL_S`; the generation keeps
the reference as given.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from common.db import uploads
from common.db.uploads import Upload
from common.errors import ApiError
from common.images import SNIFF_BYTES, sniff
from common.keys import POOL, S3, SETTINGS
from services.api.keys import LINKS

logger = logging.getLogger(__name__)

PREFIX = "uploads/"
REFERENCE = "upload:"
ACCEPTED = frozenset({"image/png", "image/jpeg", "image/webp"})


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"Upload larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:  # a chunked body (or a lying length) stops being read here
            raise ApiError(413, f"Upload larger than {limit} bytes")
    return bytes(body)


async def store(request: web.Request, user_id: str) -> dict[str, Any]:
    """Store the request's body as the user's upload; its public description."""
    settings = request.app[SETTINGS]
    data = await _read_bounded(request, settings.upload_max_bytes)
    kind = sniff(data[:SNIFF_BYTES])
    if kind is None or kind[1] not in ACCEPTED:
        raise ApiError(400, "Not an image: send the raw bytes of a PNG, JPEG or WebP image")
    extension, content_type = kind
    upload_id = uuid.uuid4()
    upload = Upload(upload_id, user_id, f"{PREFIX}{upload_id}.{extension}", content_type, len(data))
    try:
        await request.app[S3].put_object(
            Bucket=settings.s3_bucket, Key=upload.object_key, Body=data, ContentType=content_type
        )
    except (BotoCoreError, ClientError) as exc:
        logger.warning("could not store an upload: %s", exc)
        raise ApiError(503, "Storage is unavailable; please try again", {"Retry-After": "2"}) from None
    async with request.app[POOL].acquire() as conn:
        await uploads.insert(conn, upload)
    logger.info("upload stored", extra={"upload_id": str(upload_id), "bytes": len(data)})
    return {"id": str(upload_id), "ref": f"{REFERENCE}{upload_id}", "contentType": content_type, "bytes": len(data)}


async def resolve(request: web.Request, user_id: str, model_input: dict[str, Any]) -> dict[str, Any]:
    """The input as Skytells receives it: each `"upload:<id>"` of the caller's own upload replaced by a presigned
    URL of it; ApiError 400 naming the field for an unknown upload or another user's."""
    named = references(model_input)
    if not named:
        return model_input
    ids: dict[str, uuid.UUID] = {}
    for field, raw in named.items():
        try:
            ids[field] = uuid.UUID(raw)
        except ValueError:
            raise ApiError(400, f"Invalid input: {field}: no such upload") from None
    async with request.app[POOL].acquire() as conn:
        keys = await uploads.owned_keys(conn, user_id, set(ids.values()))
    settings, presigner = request.app[SETTINGS], request.app[LINKS].presigner
    resolved = dict(model_input)
    for field, upload_id in ids.items():
        if upload_id not in keys:
            raise ApiError(400, f"Invalid input: {field}: no such upload")
        resolved[field] = presigner.url(keys[upload_id], settings.output_url_ttl_s)
    return resolved


def references(model_input: dict[str, Any]) -> dict[str, str]:
    """Field -> upload id of every `"upload:<id>"` value of the input."""
    return {
        name: value[len(REFERENCE) :]
        for name, value in model_input.items()
        if isinstance(value, str) and value.startswith(REFERENCE)
    }
