"""Typed application keys of the notifier."""

from __future__ import annotations

import aiohttp
import asyncpg
from aiohttp import web

from common.settings import Settings
from services.notifier.dispatcher import Dispatcher

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
HTTP = web.AppKey("http", aiohttp.ClientSession)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
