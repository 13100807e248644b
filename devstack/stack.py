"""Bringing up Studio locally: infrastructure where nothing answers yet, the simulator, the three services.

Used by `python -m devstack` and by the test session, so both run the same real servers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from common.migrate import migrate
from common.settings import Settings
from common.storage import ensure_bucket, open_s3
from devstack.postgres import Postgres
from devstack.processes import ManagedProcess, http_ok, port_open, wait_until
from devstack.rabbitmq import RabbitMQ, amqp_handshake
from devstack.s3 import S3Server

logger = logging.getLogger(__name__)

SIM_DEFAULTS = {"SIM_API_KEY": "sim-key", "SIM_WEBHOOK_SECRET": "sim-secret", "SIM_PORT": "8090"}
SERVICES = {  # name -> (module, settings field holding its port)
    "api": ("services.api", "api_port"),
    "webhook": ("services.webhook", "webhook_port"),
    "persister": ("services.persister", "persister_port"),
}


class _Stoppable(Protocol):
    def stop(self) -> object: ...


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def simulator_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Point Studio at the simulator: its URL, key and secret, and its CDN host allowed for downloads."""
    env = {**SIM_DEFAULTS, **{k: v for k, v in environ.items() if k.startswith("SIM_")}}
    port = env["SIM_PORT"]
    allowed = environ.get("OUTPUT_ALLOWED_HOSTS", "*.skytells.ai,*.skytells.cloud")
    return {
        **env,
        "SKYTELLS_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "SKYTELLS_API_KEY": env["SIM_API_KEY"],
        "SKYTELLS_WEBHOOK_SECRET": env["SIM_WEBHOOK_SECRET"],
        "OUTPUT_ALLOWED_HOSTS": f"{allowed},127.0.0.1",
    }


class Stack:
    """Everything it started, in order, so `stop` ends exactly that and nothing else."""

    def __init__(self, env: Mapping[str, str], work_dir: Path) -> None:
        self.env = dict(env)
        self.work_dir = work_dir
        self.started: list[tuple[str, _Stoppable]] = []
        self.postgres: Postgres | None = None
        self.rabbitmq: RabbitMQ | None = None
        self.s3: S3Server | None = None
        self.processes: dict[str, ManagedProcess] = {}

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def start_infrastructure(self) -> None:
        settings = self.settings
        host, port = _host_port(settings.database_url, 5432)
        if not port_open(host, port):
            self.postgres = Postgres(settings.database_url).start()
            self.started.append(("postgres", self.postgres))
        host, port = _host_port(settings.amqp_url, 5672)
        if not amqp_handshake(host, port):
            self.rabbitmq = RabbitMQ(settings.amqp_url).start()
            self.started.append(("rabbitmq", self.rabbitmq))
        if settings.s3_endpoint_url:
            host, port = _host_port(settings.s3_endpoint_url, 80)
            if not port_open(host, port):
                self.s3 = S3Server(settings.s3_endpoint_url, self.work_dir).start()
                self.started.append(("s3", self.s3))
        asyncio.run(self._prepare(settings))

    @staticmethod
    async def _prepare(settings: Settings) -> None:
        await migrate(settings.database_url)
        async with open_s3(settings) as client:
            await ensure_bucket(client, settings.s3_bucket)

    def start_simulator(self) -> ManagedProcess:
        port = self.env.get("SIM_PORT", SIM_DEFAULTS["SIM_PORT"])
        process = ManagedProcess.python(
            "skytells-sim",
            "devstack.skytells",
            env=self.env,
            log_path=self.work_dir / "logs" / "skytells.log",
        ).start()
        self._track("skytells-sim", process)
        wait_until("Skytells simulator", lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, process)
        return process

    def start_service(
        self, name: str, env: Mapping[str, str] | None = None, label: str | None = None, wait: bool = True
    ) -> ManagedProcess:
        module, port_field = SERVICES[name]
        merged = {**self.env, **(env or {})}
        port = getattr(Settings.from_env(merged), port_field)
        label = label or name
        process = ManagedProcess.python(
            label, module, env=merged, log_path=self.work_dir / "logs" / f"{label}.log"
        ).start()
        self._track(label, process)
        if wait:
            url = f"http://127.0.0.1:{port}/readyz"
            wait_until(f"{label} /readyz", lambda: http_ok(url), 60, process)
        return process

    def _track(self, label: str, process: ManagedProcess) -> None:
        self.processes[label] = process
        self.started.append((label, process))

    def stop(self) -> None:
        for name, thing in reversed(self.started):
            try:
                thing.stop()
            except Exception:  # keep stopping the rest; each failure is reported
                logger.exception("stopping %s failed", name)
        self.started.clear()
