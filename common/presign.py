"""The URLs Studio gives out for stored objects: SigV4-presigned GETs, or plain public URLs.

`Presigner` signs through botocore's own presigner (`generate_presigned_url`, signature version s3v4,
path-style, against `S3_PUBLIC_ENDPOINT_URL`, the address clients reach): no signing code of ours, and no I/O
(presigning is local HMAC work over the credentials). `OutputLinks` is what answers use: per `S3_OUTPUT_ACCESS`,
a presigned URL valid at least `OUTPUT_URL_TTL_S`, or `S3_PUBLIC_BASE_URL/key`.

Presigning costs a few hundred microseconds of CPU per URL on the event loop (a page of 100 generations would
hold it for tens of milliseconds), so `OutputLinks` reuses a URL for a short window and signs it for the
lifetime plus that window: every URL it hands out is still valid for at least `OUTPUT_URL_TTL_S`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import botocore.session
from botocore.config import Config

from common.settings import OutputAccess, Settings

# S3 refuses a SigV4 presigned URL valid longer than seven days.
MAX_EXPIRES_S = 604_800


class Presigner:
    """SigV4 GET URLs against `S3_PUBLIC_ENDPOINT_URL` via botocore's generate_presigned_url (no I/O)."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self._bucket = bucket

    @classmethod
    def from_settings(cls, settings: Settings) -> Presigner:
        # A plain botocore client: creating it and presigning with it touch no network, unlike aioboto3's
        # client context, so it can be built where no event loop runs.
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=settings.s3_public_endpoint_url or None,
            region_name=settings.aws_region,
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        return cls(client, settings.s3_bucket)

    def url(self, key: str, expires_s: int) -> str:
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url


class OutputLinks:
    """The URL of a stored object as Studio gives it out, per `S3_OUTPUT_ACCESS`."""

    def __init__(
        self,
        access: OutputAccess,
        public_base_url: str,
        presigner: Presigner,
        ttl_s: int,
        *,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.access = access
        self._base = public_base_url
        self._presigner = presigner
        self._ttl_s = ttl_s
        # Reused for a tenth of the lifetime, at most five minutes; signed for that much longer, within S3's cap.
        self._reuse_s = min(ttl_s / 10, 300.0)
        self._signed_for = min(ttl_s + int(self._reuse_s), MAX_EXPIRES_S)
        self._cache: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> OutputLinks:
        return cls(
            settings.s3_output_access,
            settings.s3_public_base_url,
            Presigner.from_settings(settings),
            settings.output_url_ttl_s,
        )

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    @property
    def presigner(self) -> Presigner:
        """For what is presigned whatever the mode (uploads are never public)."""
        return self._presigner

    def url(self, key: str) -> str:
        if self.access is OutputAccess.PUBLIC:
            return f"{self._base}/{key}"
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._reuse_s:
            self._cache.move_to_end(key)
            return cached[1]
        url = self._presigner.url(key, self._signed_for)
        self._cache[key] = (now, url)
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return url

    @property
    def origin(self) -> str:
        """`scheme://host[:port]` of the URLs handed out: where a browser loads the images from."""
        parts = urlsplit(self._base if self.access is OutputAccess.PUBLIC else self._presigner.url("origin", 60))
        return f"{parts.scheme}://{parts.netloc}"

    def forget(self, key: str) -> None:
        """Drop a cached URL (its object was deleted)."""
        self._cache.pop(key, None)
