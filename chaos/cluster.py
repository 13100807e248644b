"""The soak's own Studio: PostgreSQL, RabbitMQ, an S3 server, the simulator, and two replicas of each service.

API and gateway replicas listen on ports of their own behind a `Balancer` on the public port, as they would
behind a proxy. The local stack's supervisor keeps every replica running (one that exits is started again, as
compose's `restart: unless-stopped` does); the cluster inflicts the soak's faults through the stack.

With `rabbitmq_nodes` > 1 RabbitMQ is a cluster of that many nodes and its outage kills one node (in turn the
queue leaders' node and another), the others carrying on; with `postgres_standby` PostgreSQL is a primary with a
synchronous standby, and its outage kills the primary, promotes the standby after the outage's time, and
rebuilds the old primary as the new standby.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from chaos.balancer import Balancer
from chaos.schedule import FaultKind
from common.topology import QUEUE
from devstack.environment import loopback_env
from devstack.postgres import Postgres
from devstack.postgres_pair import PostgresPair
from devstack.processes import free_port
from devstack.stack import SERVICES, Server, Stack
from devstack.tokens import issue_token

logger = logging.getLogger(__name__)

REPLICAS = 2
JWT_SECRET = "chaos-jwt-secret-0123456789abcdef0123"
PORT_VARS = {"api": "API_PORT", "webhook": "WEBHOOK_PORT", "persister": "PERSISTER_PORT", "notifier": "NOTIFIER_PORT"}
NOTIFY_TIMEOUT_S = 3.0


def soak_env(
    public_api: int, public_webhook: int, output_ttl_s: float, rabbitmq_nodes: int = 1, postgres_standby: bool = False
) -> dict[str, str]:
    return loopback_env(
        DEVSTACK_RABBITMQ_NODES=str(rabbitmq_nodes),
        DEVSTACK_POSTGRES_STANDBY="1" if postgres_standby else "0",
        S3_BUCKET="studio-chaos",
        SIM_DELAY_S="1",
        SIM_OUTPUT_TTL_S=f"{output_ttl_s:g}",
        API_PORT=str(public_api),
        WEBHOOK_PORT=str(public_webhook),
        PUBLIC_WEBHOOK_URL=f"http://127.0.0.1:{public_webhook}/api/webhooks",
        AUTH_JWT_SECRET=JWT_SECRET,
        QUOTA_MAX_ACTIVE="10",
        # Faults last up to half a minute: the retry schedule must outlast them, as it does in production.
        RETRY_BASE_S="1",
        RETRY_MAX_S="20",
        # A dropped callback's outcome must reach the persister well within the simulator's shortened output
        # retention (40 s and more), as 120 s + 15 s do within Skytells' 5 minutes.
        RECONCILE_AFTER_S="10",
        RECONCILE_INTERVAL_S="5",
        # A generation with no prediction id (its create's answer lost, or its API replica killed mid-call) is
        # looked for in Skytells' list from RECONCILE_AFTER_S on, and ends `failed` if not found within this (600 s
        # by default): the one whose create never reached Skytells must end within the soak's drain too.
        RECONCILE_UNKNOWN_AFTER_S="90",
        # Webhooks go to the soak's own receivers on loopback; retries quick enough to settle in the drain.
        NOTIFY_ALLOW_HOSTS="127.0.0.1",
        NOTIFY_TIMEOUT_S=str(NOTIFY_TIMEOUT_S),
        NOTIFY_RETRY_BASE_S="1",
        NOTIFY_RETRY_MAX_S="10",
        NOTIFY_LEASE_S="10",
        LOG_LEVEL="INFO",
    )


class Cluster:
    def __init__(
        self, work_dir: Path, output_ttl_s: float, rabbitmq_nodes: int = 1, postgres_standby: bool = False
    ) -> None:
        self.api_port, self.webhook_port = free_port(), free_port()
        self.env = soak_env(self.api_port, self.webhook_port, output_ttl_s, rabbitmq_nodes, postgres_standby)
        self.postgres_standby = postgres_standby
        self.rabbitmq_kills = 0
        self.stack = Stack(self.env, work_dir)
        # Each replica's own port (the persister's serves only its probes and metrics).
        self.ports = {service: [free_port() for _ in range(REPLICAS)] for service in SERVICES}
        self.labels: dict[str, list[str]] = {}
        self.kills = 0
        self.balancers = [
            Balancer("api", self.api_port, self.ports["api"]),
            Balancer("webhook", self.webhook_port, self.ports["webhook"]),
        ]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SIM_PORT']}"

    @property
    def self_restarts(self) -> int:
        """Restarts of replicas that exited by themselves (not killed by a fault)."""
        restarts = sum(self.stack.supervisor.restarts(label) for labels in self.labels.values() for label in labels)
        return restarts - self.kills

    @property
    def replica_ports(self) -> list[int]:
        """Every replica's own port, its probes answering there."""
        return [port for ports in self.ports.values() for port in ports]

    def fault_name(self, kind: FaultKind) -> str:
        """What a RabbitMQ or PostgreSQL fault is in this infrastructure."""
        if kind == FaultKind.RABBITMQ and self.stack.rabbit_cluster is not None:
            return "rabbitmq node SIGKILL + restart"
        if kind == FaultKind.POSTGRES and self.stack.postgres_pair is not None:
            return "postgres primary killed, standby promoted, old primary rebuilt"
        return str(kind)

    def token(self, user: str) -> str:
        return issue_token(JWT_SECRET, user, ttl_s=6 * 3600)

    async def start(self) -> None:
        # Commits must survive the immediate stops the soak inflicts, as they do in production: the local
        # stack's PostgreSQL acknowledges commits before writing them (synchronous_commit=off), which loses the
        # last ones at a crash. The stack leaves a server that already answers alone.
        if self.postgres_standby:
            pair = PostgresPair(self.env["DATABASE_URL"], durable=True)
            self.stack.postgres_pair = await asyncio.to_thread(pair.start)
            self.stack.started.append(("postgres", pair))
        else:
            postgres = Postgres(self.env["DATABASE_URL"], durable=True)
            self.stack.postgres = await asyncio.to_thread(postgres.start)
            self.stack.started.append(("postgres", postgres))
        await asyncio.to_thread(self.stack.start_infrastructure)
        await asyncio.to_thread(self.stack.start_simulator)
        for balancer in self.balancers:
            await balancer.up()
        for service, ports in self.ports.items():
            envs = [{PORT_VARS[service]: str(port)} for port in ports]
            self.labels[service] = await asyncio.to_thread(self.stack.start_replicas, service, envs)

    # The faults. Each returns once the fault is over and the part is starting again.

    async def kill_replica(self, service: str, n: int) -> None:
        """SIGKILL; the supervisor starts it again."""
        labels = self.labels[service]
        self.kills += 1
        await asyncio.to_thread(self.stack.kill, labels[n % len(labels)])

    async def outage(self, server: Server, down_s: float) -> None:
        """RabbitMQ SIGKILLed, PostgreSQL stopped immediately, the S3 server stopped; started again later. On a
        cluster, one RabbitMQ node; with a standby, a failover (see the module docstring)."""
        if server == "rabbitmq" and self.stack.rabbit_cluster is not None:
            await self._node_outage(down_s)
        elif server == "postgres" and (pair := self.stack.postgres_pair) is not None:
            await self._failover(pair, down_s)
        else:
            await asyncio.to_thread(self.stack.outage, server)
            await asyncio.sleep(down_s)
            await asyncio.to_thread(self.stack.recover, server)

    async def _node_outage(self, down_s: float) -> None:
        """Every other node kill takes the node leading the persister's queue (its quorum elects a new leader)."""
        leader = await asyncio.to_thread(self.stack.rabbitmq_leader, QUEUE)
        nodes = len(self.env["AMQP_URL"].split(","))
        victim = leader if self.rabbitmq_kills % 2 == 0 else (leader + 1) % nodes
        self.rabbitmq_kills += 1
        name = await asyncio.to_thread(self.stack.kill_rabbitmq_node, victim)
        logger.warning("rabbitmq node %s killed (%s)", name, "the queue leader" if victim == leader else "a follower")
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.stack.resume_rabbitmq_node, victim)

    async def _failover(self, pair: PostgresPair, down_s: float) -> None:
        """The primary dies; after `down_s` (an operator's or a failover manager's reaction) the standby is
        promoted, then the old primary is rebuilt as the new standby (commits wait for it: synchronous)."""
        await asyncio.to_thread(pair.servers[pair.primary].crash)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.stack.fail_over_postgres)
        await asyncio.to_thread(self.stack.rebuild_postgres_standby)

    async def stop(self) -> None:
        for balancer in self.balancers:
            await balancer.down()
        await asyncio.to_thread(self.stack.stop)
