"""Typed application keys of the persister."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
from aiohttp import web

from common.resources import BrokerLink
from common.settings import Settings
from common.skytells import SkytellsClient
from common.updates import UpdatePublisher
from services.persister.consumer import Consumer

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
S3: web.AppKey[Any] = web.AppKey("s3")
HTTP = web.AppKey("http", httpx.AsyncClient)
BROKER = web.AppKey("broker", BrokerLink)
CONSUMER: web.AppKey[Consumer | None] = web.AppKey("consumer")
SKYTELLS = web.AppKey("skytells", SkytellsClient)
UPDATES = web.AppKey("updates", UpdatePublisher)
