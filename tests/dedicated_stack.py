"""Infrastructure of a test module's own (PostgreSQL, RabbitMQ and S3 server on free ports, with their own
persister processes), so halting a server never disturbs another test; and what its tests read of them.

Its persisters retry fast (RETRY_BASE_S 0.3, RETRY_MAX_S 2, 8 attempts) and fit download retries in a 5-second
window, so the schedules play out within seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from devstack.processes import ManagedProcess, free_port
from devstack.stack import Stack
from tests.helpers import eventually, metric, metrics_of

PERSISTER_ENV = {
    "RETRY_BASE_S": "0.3",
    "RETRY_MAX_S": "2",
    "PERSISTER_MAX_ATTEMPTS": "8",
    "DOWNLOAD_RETRY_WINDOW_S": "5",
    "PERSISTER_PREFETCH": "4",
    "RECONCILE_AFTER_S": "3600",
    "PYTHONUNBUFFERED": "1",  # a killed persister's last log lines are the interesting ones
}


@contextmanager
def dedicated_stack(stack: Stack, work_dir: Path) -> Iterator[Stack]:
    """Servers and a persister (`persister-a`) of their own, with the session stack's other settings."""
    env = {k: v for k, v in stack.env.items() if k != "S3_PUBLIC_BASE_URL"}
    env.update(PERSISTER_ENV)
    env.update(
        {
            "DATABASE_URL": f"postgresql://studio:studio@127.0.0.1:{free_port()}/studio",
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "S3_BUCKET": f"studio-dedicated-{uuid.uuid4().hex[:8]}",
            "PERSISTER_PORT": str(free_port()),
        }
    )
    own = Stack(env, work_dir)
    try:
        own.start_infrastructure()
        own.start_service("persister", label="persister-a")
        yield own
    finally:
        own.stop()


def persister_port_of(stack: Stack, label: str = "persister-a") -> str:
    return stack.env["PERSISTER_PORT"] if label == "persister-a" else stack.processes[label].env["PERSISTER_PORT"]


def start_replica(stack: Stack, label: str, **env: str) -> ManagedProcess:
    return stack.start_service("persister", env={"PERSISTER_PORT": str(free_port()), **env}, label=label)


async def wait_retries(http: httpx.AsyncClient, port: str, at_least: float) -> None:
    async def retried() -> bool:
        return metric(await metrics_of(http, port), "studio_persister_retries_total") >= at_least

    await eventually(f"{at_least:g} retries", retried)


async def more_unknown(http: httpx.AsyncClient, port: str, seen: float) -> bool:
    text = await metrics_of(http, port)
    return metric(text, "studio_persister_reconciled_total", result="unknown") > seen
