"""Typed application keys of the API service."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from common.presign import Presigner
from common.resources import BrokerLink
from common.settings import Settings
from common.skytells import SkytellsClient
from common.updates import UpdatePublisher
from services.api.auth import Authenticator
from services.api.hub import Hub
from services.api.models import ModelCatalog

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
SKYTELLS = web.AppKey("skytells", SkytellsClient)
AUTH = web.AppKey("auth", Authenticator)
BROKER = web.AppKey("broker", BrokerLink)
HUB = web.AppKey("hub", Hub)
UPDATES = web.AppKey("updates", UpdatePublisher)
MODELS = web.AppKey("models", ModelCatalog)
S3: web.AppKey[Any] = web.AppKey("s3")
PRESIGNER = web.AppKey("presigner", Presigner)
