"""SigV4-presigned GET URLs of stored objects, through botocore's own presigner (`generate_presigned_url`,
signature version s3v4, path-style, against `S3_PUBLIC_ENDPOINT_URL`, the address clients reach): no signing code
of ours, and no I/O (presigning is local HMAC work over the credentials)."""

from __future__ import annotations

from typing import Any

import botocore.session
from botocore.config import Config

from common.settings import Settings


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
