"""`python -m devstack.compose_check.bucket`: the bucket job of the compose check's S3 override, which makes the
bucket at S3_ENDPOINT_URL as the local stack does (see s3.override.yml beside this file)."""

from __future__ import annotations

import asyncio
import os

from common.settings import Settings
from common.storage import ensure_bucket, open_s3


async def _make(settings: Settings) -> None:
    async with open_s3(settings) as client:
        await ensure_bucket(client, settings.s3_bucket, settings.s3_output_access)


def main() -> None:
    asyncio.run(_make(Settings.from_env(os.environ)))


if __name__ == "__main__":
    main()
