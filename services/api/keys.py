"""Typed application keys of the API service."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from common.presign import OutputLinks
from common.resources import BrokerLink
from common.settings import Settings
from common.skytells import SkytellsClient
from common.updates import UpdatePublisher
from services.api.auth import Authenticator
from services.api.hub import Hub

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
SKYTELLS = web.AppKey("skytells", SkytellsClient)
AUTH = web.AppKey("auth", Authenticator)
BROKER = web.AppKey("broker", BrokerLink)
HUB = web.AppKey("hub", Hub)
UPDATES = web.AppKey("updates", UpdatePublisher)
LINKS = web.AppKey("links", OutputLinks)
S3: web.AppKey[Any] = web.AppKey("s3")  # aioboto3's client has no public class to name
