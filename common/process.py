"""Running a service's process: its settings and logging at start, its event loop, and `web.run_app`."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from common import log as logs
from common.access_log import AccessLog, access_logger
from common.settings import Settings, SettingsError


def event_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when asked for and installed, else asyncio's own."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # optional: a platform without it runs on asyncio's loop
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(app: web.Application, host: str, port: int, *, use_uvloop: bool, **kwargs: Any) -> None:
    """`web.run_app` owns the lifecycle: SIGTERM stops accepting and lets in-flight requests finish."""
    # What was imported and built so far lives as long as the process: out of the collector's sight, an old-
    # generation collection does not walk it again while a request waits (a pause in the latency tail).
    gc.freeze()
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        shutdown_timeout=30,
        access_log_class=AccessLog,
        access_log=access_logger,
        loop=event_loop(use_uvloop),
        **kwargs,
    )


def boot(service: str, required: Sequence[str]) -> Settings:
    """A service's settings from the environment, and JSON logging; exits naming every bad variable."""
    try:
        settings = Settings.from_env(os.environ, required=required)
    except SettingsError as exc:
        sys.exit(str(exc))
    logs.configure(service, settings.log_level)
    return settings
