"""The soak's own Studio: PostgreSQL, RabbitMQ, an S3 server, the simulator, and two replicas of each service.

API and gateway replicas listen on ports of their own behind a `Balancer` on the public port, as they would
behind a proxy; the S3 server sits behind one too, so an outage can be made without losing its objects. The
cluster supervises its replicas as compose's `restart: unless-stopped` does (one that exits is started again),
and knows how to inflict each fault of the soak.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from chaos.balancer import Balancer
from devstack.postgres import Postgres
from devstack.processes import ManagedProcess, free_port, http_ok, wait_until
from devstack.stack import SERVICES, Stack, simulator_env
from devstack.tokens import issue_token

logger = logging.getLogger(__name__)

REPLICAS = 2
JWT_SECRET = "chaos-jwt-secret-0123456789abcdef0123"
PORT_VARS = {"api": "API_PORT", "webhook": "WEBHOOK_PORT", "persister": "PERSISTER_PORT"}


@dataclass
class Replica:
    service: str
    label: str
    port: int
    process: ManagedProcess | None = None
    restarts: int = 0


def soak_env(public_api: int, public_webhook: int, s3_front: int, s3_port: int) -> tuple[dict[str, str], str]:
    """The services' environment (S3 behind its balancer) and the S3 server's own endpoint."""
    env = {k: v for k, v in os.environ.items() if k != "S3_PUBLIC_BASE_URL"}
    env |= {
        "DATABASE_URL": f"postgresql://studio:studio@127.0.0.1:{free_port()}/studio",
        "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_front}",
        "S3_BUCKET": "studio-chaos",
        "SIM_PORT": str(free_port()),
        "SIM_DELAY_S": "1",
        "API_PORT": str(public_api),
        "WEBHOOK_PORT": str(public_webhook),
        "PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{public_webhook}/api/webhooks",
        "AUTH_JWT_SECRET": JWT_SECRET,
        "QUOTA_MAX_ACTIVE": "10",
        # Faults last up to half a minute: the retry schedule must outlast them, as it does in production.
        "RETRY_BASE_S": "1",
        "RETRY_MAX_S": "20",
        "RECONCILE_AFTER_S": "20",
        "RECONCILE_INTERVAL_S": "5",
        "LOG_LEVEL": "INFO",
    }
    env.update(simulator_env(env))
    return env, f"http://127.0.0.1:{s3_port}"


class Cluster:
    def __init__(self, work_dir: Path) -> None:
        self.api_port, self.webhook_port = free_port(), free_port()
        s3_front, s3_port = free_port(), free_port()
        env, s3_direct = soak_env(self.api_port, self.webhook_port, s3_front, s3_port)
        # The stack starts the S3 server on its own port; the services reach it through the balancer.
        self.stack = Stack({**env, "S3_ENDPOINT_URL": s3_direct}, work_dir)
        self.env = env
        self.s3_direct = s3_direct
        self.replicas = [
            Replica(service, f"{service}-{n}", free_port()) for service in SERVICES for n in range(1, REPLICAS + 1)
        ]
        self.balancers = {
            "api": Balancer("api", self.api_port, [r.port for r in self.replicas if r.service == "api"]),
            "webhook": Balancer(
                "webhook", self.webhook_port, [r.port for r in self.replicas if r.service == "webhook"]
            ),
            "s3": Balancer("s3", s3_front, [s3_port]),
        }
        self.supervising = True

    def _ports(self, service: str) -> list[int]:
        return [r.port for r in self.replicas if r.service == service]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SIM_PORT']}"

    def token(self, user: str) -> str:
        return issue_token(JWT_SECRET, user, ttl_s=6 * 3600)

    async def start(self) -> None:
        # Commits must survive the immediate stops the soak inflicts, as they do in production: the local
        # stack's PostgreSQL acknowledges commits before writing them (synchronous_commit=off), which loses the
        # last ones at a crash. The stack leaves a server that already answers alone.
        postgres = Postgres(self.env["DATABASE_URL"], durable=True)
        self.stack.postgres = await asyncio.to_thread(postgres.start)
        self.stack.started.append(("postgres", postgres))
        await asyncio.to_thread(self.stack.start_infrastructure)
        await asyncio.to_thread(self.stack.start_simulator)
        for balancer in self.balancers.values():
            await balancer.up()
        for replica in self.replicas:
            self._spawn(replica)
        for replica in self.replicas:
            url = f"http://127.0.0.1:{replica.port}/readyz"
            await asyncio.to_thread(wait_until, f"{replica.label} /readyz", partial(http_ok, url), 90, replica.process)

    def _spawn(self, replica: Replica) -> None:
        env = {**self.env, PORT_VARS[replica.service]: str(replica.port)}
        replica.process = self.stack.start_service(replica.service, env=env, label=replica.label, wait=False)

    def supervise(self) -> None:
        """Start again every replica that exited (one pass; the soak calls it every second)."""
        for replica in self.replicas:
            if self.supervising and replica.process is not None and replica.process.exited:
                logger.warning("%s exited (%s); restarting", replica.label, replica.process.returncode)
                replica.process.stop()
                replica.restarts += 1
                self._spawn(replica)

    # The faults. Each returns once the fault is over and the part is starting again.

    async def kill_replica(self, service: str, n: int) -> None:
        replicas = [r for r in self.replicas if r.service == service]
        replica = replicas[n % len(replicas)]
        if replica.process is None:
            return
        process, replica.process = replica.process, None  # not the supervisor's to restart: this fault's
        await asyncio.to_thread(process.kill)
        process.stop()
        await asyncio.sleep(1.0)
        self._spawn(replica)

    async def kill_rabbitmq(self, down_s: float) -> None:
        rabbitmq = self.stack.rabbitmq
        assert rabbitmq is not None and rabbitmq.process is not None
        await asyncio.to_thread(rabbitmq.process.kill)
        rabbitmq.process.stop()
        rabbitmq.process = None
        await asyncio.sleep(down_s)
        await asyncio.to_thread(rabbitmq.resume)

    async def stop_postgres(self, down_s: float) -> None:
        """An immediate shutdown (SIGQUIT to the postmaster): no checkpoint, crash recovery at the next start."""
        postgres = self.stack.postgres
        assert postgres is not None and postgres.process is not None
        postgres.process.signal(signal.SIGQUIT)
        if postgres.process.popen is not None:
            await asyncio.to_thread(_wait_exit, postgres.process.popen)
        postgres.process.stop()
        postgres.process = None
        await asyncio.sleep(down_s)
        await asyncio.to_thread(postgres.resume)

    async def s3_outage(self, down_s: float) -> None:
        await self.balancers["s3"].down()
        await asyncio.sleep(down_s)
        await self.balancers["s3"].up()

    async def stop(self) -> None:
        self.supervising = False
        for balancer in self.balancers.values():
            await balancer.down()
        await asyncio.to_thread(self.stack.stop)


def _wait_exit(popen: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)
