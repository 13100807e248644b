"""Typed application keys of the API service."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from common.settings import Settings
from common.skytells import SkytellsClient

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
SKYTELLS = web.AppKey("skytells", SkytellsClient)
