"""Typed application keys of the API service's own (the shared ones are `common/keys.py`)."""

from __future__ import annotations

from aiohttp import web

from common.presign import OutputLinks
from services.api.auth import Authenticator
from services.api.live.hub import Hub
from services.api.models import ModelCatalog

AUTH = web.AppKey("auth", Authenticator)
HUB = web.AppKey("hub", Hub)
LINKS = web.AppKey("links", OutputLinks)
MODELS = web.AppKey("models", ModelCatalog)
