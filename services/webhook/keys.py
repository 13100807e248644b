"""Typed application keys of the webhook gateway."""

from __future__ import annotations

from aiohttp import web

from common.settings import Settings
from services.webhook.publisher import BrokerLink

SETTINGS = web.AppKey("settings", Settings)
BROKER = web.AppKey("broker", BrokerLink)
