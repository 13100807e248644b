"""Typed application keys of the API service."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from common.settings import Settings
from common.skytells import SkytellsClient
from services.api.auth import Authenticator

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
SKYTELLS = web.AppKey("skytells", SkytellsClient)
AUTH = web.AppKey("auth", Authenticator)
