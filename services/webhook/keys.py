"""Typed application keys of the webhook gateway."""

from __future__ import annotations

from aiohttp import web

from common.resources import BrokerLink
from common.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
BROKER = web.AppKey("broker", BrokerLink)
