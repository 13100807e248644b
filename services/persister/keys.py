"""Typed application keys of the persister's own (the shared ones are `common/keys.py`)."""

from __future__ import annotations

from aiohttp import web

from services.persister.consumer import Consumer

CONSUMER: web.AppKey[Consumer | None] = web.AppKey("consumer")
