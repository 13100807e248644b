"""Typed application keys of the notifier's own (the shared ones are in `common/keys.py`)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from services.notifier.dispatcher import Dispatcher

# aiohttp's client, not the httpx one `common.keys.HTTP` names: see `sender.Sender`.
SESSION = web.AppKey("session", aiohttp.ClientSession)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
