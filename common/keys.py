"""The typed application keys every service shares, declared once: what `common/resources.py` opens is stored
under these, whichever service opens it. A service's own keys stay in its `keys.py`."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
from aiohttp import web

from common.broker_link import BrokerLink
from common.settings import Settings
from common.skytells import SkytellsClient
from common.updates import UpdatePublisher

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
SKYTELLS = web.AppKey("skytells", SkytellsClient)
BROKER = web.AppKey("broker", BrokerLink)
UPDATES = web.AppKey("updates", UpdatePublisher)
HTTP = web.AppKey("http", httpx.AsyncClient)
S3: web.AppKey[Any] = web.AppKey("s3")  # aioboto3's client has no type of its own
