"""The simulator's state: its settings, the predictions it made, and the typed keys the app holds them under."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from common.predictions import SkytellsStatus
from devstack.skytells.output import Output
from devstack.skytells.png import Outputs

CREDITS_PER_IMAGE = 0.03  # what a completed prediction's `metadata.billing.credits_used` counts per image


@dataclass(frozen=True)
class SimSettings:
    port: int = 8090
    host: str = "127.0.0.1"
    api_key: str = "sim-key"
    webhook_secret: str = "sim-secret"
    delay_s: float = 1.0
    output_ttl_s: float = 300.0
    public_url: str = ""  # base of CDN URLs; default http://127.0.0.1:{port}

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str]) -> SimSettings:
        port = int(environ.get("SIM_PORT", "8090"))
        return cls(
            port=port,
            host=environ.get("SIM_HOST", "127.0.0.1"),
            api_key=environ.get("SIM_API_KEY", "sim-key"),
            webhook_secret=environ.get("SIM_WEBHOOK_SECRET", "sim-secret"),
            delay_s=float(environ.get("SIM_DELAY_S", "1")),
            output_ttl_s=float(environ.get("SIM_OUTPUT_TTL_S", "300")),
            public_url=environ.get("SIM_PUBLIC_URL", "").rstrip("/") or f"http://127.0.0.1:{port}",
        )


@dataclass
class SimPrediction:
    id: str
    model: str
    input: dict[str, Any]
    webhook_url: str | None
    events: tuple[str, ...]
    directives: dict[str, str]
    image: bytes | None = None  # the reference image it downloaded (its `image` input)
    status: str = SkytellsStatus.PENDING
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None
    completed_at: datetime | None = None
    completed_monotonic: float | None = None
    error: str | None = None
    canceled: bool = False
    outputs: list[Output] = field(default_factory=list)
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # what was sent, for tests
    cdn_requests: int = 0  # every CDN request for this prediction, for `#sim:cdnbusy=N`
    output_requests: list[int] = field(default_factory=list)  # per output, for `#sim:cdn503=N`
    get_requests: int = 0  # for `#sim:ratelimit=N`
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set on reaching a terminal status

    def settle(self, status: str) -> None:
        self.status = status
        self.completed_at = datetime.now(UTC)
        self.completed_monotonic = time.monotonic()
        self.settled.set()

    def output_urls(self, base: str) -> list[str]:
        return [f"{base}/cdn/{self.id}/{n}.{output.extension}" for n, output in enumerate(self.outputs)]

    def view(self, base: str) -> dict[str, Any]:
        """The prediction as Skytells' API shows it."""
        # A failed prediction also carries its message in `response`, where the SDK's `run()` reads it.
        extra: dict[str, Any] = {"response": self.error} if self.error else {}
        if self.status == SkytellsStatus.SUCCEEDED and self.started_at and self.completed_at:
            extra["metrics"] = {
                "predict_time": round((self.completed_at - self.started_at).total_seconds(), 3),
                "total_time": round((self.completed_at - self.created_at).total_seconds(), 3),
                "image_count": len(self.outputs),
            }
            extra["metadata"] = {"billing": {"credits_used": round(CREDITS_PER_IMAGE * len(self.outputs), 4)}}
        return {
            "id": self.id,
            "status": self.status,
            "model": {"name": self.model, "type": "image"},
            "type": "inference",
            "source": "api",
            "input": self.input,
            "output": self.output_urls(base) or None,
            "error": self.error,
            "webhook": {"url": self.webhook_url, "events": list(self.events)} if self.webhook_url else None,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "urls": {
                "get": f"{base}/v1/predictions/{self.id}",
                "cancel": f"{base}/v1/predictions/{self.id}/cancel",
            },
            **extra,
        }


SIM_SETTINGS: web.AppKey[SimSettings] = web.AppKey("sim_settings", SimSettings)
PREDICTIONS: web.AppKey[dict[str, SimPrediction]] = web.AppKey("predictions", dict)
OUTPUTS: web.AppKey[Outputs] = web.AppKey("outputs", Outputs)
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)
TASKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("tasks")
