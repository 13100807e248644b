"""Typed application keys of the persister."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
from aiohttp import web

from common.broker import Broker
from common.settings import Settings
from common.skytells import SkytellsClient
from services.persister.consumer import Consumer

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
S3: web.AppKey[Any] = web.AppKey("s3")
HTTP = web.AppKey("http", httpx.AsyncClient)
BROKER = web.AppKey("broker", Broker)
CONSUMER = web.AppKey("consumer", Consumer)
SKYTELLS = web.AppKey("skytells", SkytellsClient)
