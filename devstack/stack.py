"""Bringing up Studio locally: infrastructure where nothing answers yet, the simulator, the four services.

Used by `python -m devstack`, by the test session and by the fault soak, so all run the same real servers.
Services can run supervised (restarted when they exit, `supervisor.py`), in several replicas each with its own
environment; `kill` signals one, and `outage` / `recover` take an infrastructure server down the hard way and
bring it back on the same port with its data:
- `postgres`: an immediate shutdown (SIGQUIT to the postmaster, as `pg_ctl stop -m immediate`), then a start,
  with crash recovery;
- `rabbitmq`: SIGKILL to the node, then a start on the same data directory;
- `s3`: the server stops (it saves its objects first, see `s3.py`), then starts again and loads them back.

Past one machine (`environment.py` says which nodes `DEVSTACK_RABBITMQ_NODES` and `DEVSTACK_POSTGRES_STANDBY`
add): `kill_rabbitmq_node` / `resume_rabbitmq_node` take one node down and back, `fail_over_postgres` kills the
primary and promotes the standby, `rebuild_postgres_standby` brings the old primary back as the new standby.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

from common.broker import node_urls
from common.migrate import migrate
from common.setting_parsers import database_hosts
from common.settings import Settings
from common.storage import ensure_bucket, open_s3
from devstack.environment import SIM_DEFAULTS, cluster_env
from devstack.postgres import Postgres
from devstack.postgres_pair import PostgresPair
from devstack.processes import ManagedProcess, http_ok, port_open, wait_until
from devstack.rabbitmq import RabbitCluster, RabbitMQ, amqp_handshake
from devstack.s3 import S3Server
from devstack.supervisor import Supervisor

logger = logging.getLogger(__name__)

SERVICES = {  # name -> (module, settings field holding its port)
    "api": ("services.api", "api_port"),
    "webhook": ("services.webhook", "webhook_port"),
    "persister": ("services.persister", "persister_port"),
    "notifier": ("services.notifier", "notifier_port"),
}


Server = Literal["postgres", "rabbitmq", "s3"]


class _Stoppable(Protocol):
    def stop(self) -> object: ...


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


class Stack:
    """Everything it started, in order, so `stop` ends exactly that and nothing else."""

    def __init__(self, env: Mapping[str, str], work_dir: Path, data_dir: Path | None = None) -> None:
        """`work_dir` takes logs and, without `data_dir`, the servers' data; with it, the database, broker and
        bucket live under `data_dir` and are found there again by the next stack."""
        self.env = cluster_env(env)
        self.work_dir = work_dir
        self.data_dir = data_dir
        self.started: list[tuple[str, _Stoppable]] = []
        self.postgres: Postgres | None = None
        self.postgres_pair: PostgresPair | None = None
        self.rabbitmq: RabbitMQ | None = None
        self.rabbit_cluster: RabbitCluster | None = None
        self.s3: S3Server | None = None
        self.processes: dict[str, ManagedProcess] = {}
        self.supervisor = Supervisor()

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def start_infrastructure(self) -> None:
        settings = self.settings
        if not any(port_open(host, port) for host, port in database_hosts(settings.database_url)):
            if len(database_hosts(settings.database_url)) > 1:
                self.postgres_pair = PostgresPair(settings.database_url, data_dir=self._kept("postgres")).start()
                self.started.append(("postgres", self.postgres_pair))
            else:
                self.postgres = Postgres(settings.database_url, data_dir=self._kept("postgres")).start()
                self.started.append(("postgres", self.postgres))
        nodes = node_urls(settings.amqp_url)
        if not any(amqp_handshake(*_host_port(node, 5672)) for node in nodes):
            if len(nodes) > 1:
                self.rabbit_cluster = RabbitCluster(nodes, data_dir=self._kept("rabbitmq")).start()
                self.started.append(("rabbitmq", self.rabbit_cluster))
            else:
                self.rabbitmq = RabbitMQ(settings.amqp_url, data_dir=self._kept("rabbitmq")).start()
                self.started.append(("rabbitmq", self.rabbitmq))
        if settings.s3_endpoint_url:
            host, port = _host_port(settings.s3_endpoint_url, 80)
            if not port_open(host, port):
                self.s3 = S3Server(settings.s3_endpoint_url, self.work_dir, data_dir=self._kept("s3")).start()
                self.started.append(("s3", self.s3))
        asyncio.run(self._prepare(settings))

    def _kept(self, server: str) -> Path | None:
        return None if self.data_dir is None else self.data_dir / server

    @classmethod
    async def _prepare(cls, settings: Settings) -> None:
        await migrate(settings.database_url)
        await cls._prepare_bucket(settings)

    @staticmethod
    async def _prepare_bucket(settings: Settings) -> None:
        async with open_s3(settings) as client:
            await ensure_bucket(client, settings.s3_bucket, settings.s3_output_access)

    def start_simulator(self, *, supervise: bool = False) -> ManagedProcess:
        port = self.env.get("SIM_PORT", SIM_DEFAULTS["SIM_PORT"])

        def spawn() -> ManagedProcess:
            log = self.work_dir / "logs" / "skytells.log"
            return ManagedProcess.python("skytells-sim", "devstack.skytells", env=self.env, log_path=log).start()

        if supervise:
            process = self.supervisor.add("skytells-sim", spawn)
        else:
            process = spawn()
            self._track("skytells-sim", process)
        wait_until("Skytells simulator", lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, process)
        return process

    def start_service(
        self,
        name: str,
        env: Mapping[str, str] | None = None,
        label: str | None = None,
        wait: bool = True,
        *,
        supervise: bool = False,
    ) -> ManagedProcess:
        """Start one process of a service (`label` names it, default the service); with `supervise`, it is
        started again whenever it exits, until `stop`."""
        module, port_field = SERVICES[name]
        merged = {**self.env, **(env or {})}
        port = getattr(Settings.from_env(merged), port_field)
        label = label or name
        if name == "persister" and "SPOOL_DIR" not in (env or {}):
            # A spool per replica, found again by the replica's next start (a spool is one process's: it is locked).
            merged["SPOOL_DIR"] = str(Path(merged.get("SPOOL_DIR") or self.work_dir / "spool") / label)

        def spawn() -> ManagedProcess:
            log = self.work_dir / "logs" / f"{label}.log"
            return ManagedProcess.python(label, module, env=merged, log_path=log).start()

        if supervise:
            process = self.supervisor.add(label, spawn)
        else:
            process = spawn()
            self._track(label, process)
        if wait:
            self.wait_ready(label, port, process)
        return process

    def start_replicas(self, name: str, envs: Sequence[Mapping[str, str]], *, wait: bool = True) -> list[str]:
        """Supervised replicas of a service, one per environment (each overriding the stack's: its own port, or
        the same port where the service shares it); their labels are `{name}-1`, `{name}-2`, ..."""
        labels = [f"{name}-{n}" for n in range(1, len(envs) + 1)]
        for label, env in zip(labels, envs, strict=True):
            self.start_service(name, env, label, wait=False, supervise=True)
        if wait:
            for label, env in zip(labels, envs, strict=True):
                port = getattr(Settings.from_env({**self.env, **env}), SERVICES[name][1])
                self.wait_ready(label, port, self.supervisor.process(label))
        return labels

    def wait_ready(self, label: str, port: int, process: ManagedProcess | None = None, timeout: float = 60) -> None:
        url = f"http://127.0.0.1:{port}/readyz"
        wait_until(f"{label} /readyz", lambda: http_ok(url), timeout, process)

    def kill(self, label: str, signum: int = signal.SIGKILL) -> None:
        """Signal a supervised process; the supervisor starts it again."""
        self.supervisor.kill(label, signum)

    def outage(self, server: Server) -> None:
        """Take an infrastructure server this stack started down, the hard way (see the module docstring)."""
        if server == "postgres" and self.postgres is not None:
            self.postgres.crash()
        elif server == "rabbitmq" and self.rabbitmq is not None:
            self.rabbitmq.kill()
        elif server == "s3" and self.s3 is not None:
            self.s3.halt()
        else:
            raise ValueError(f"{server} was not started by this stack")

    def recover(self, server: Server) -> None:
        """Start a server again after `outage`, on the same port and data; returns once it answers."""
        started: dict[str, Callable[[], object] | None] = {
            "postgres": self.postgres.resume if self.postgres else None,
            "rabbitmq": self.rabbitmq.resume if self.rabbitmq else None,
            "s3": self.s3.resume if self.s3 else None,
        }
        resume = started[server]
        if resume is None:
            raise ValueError(f"{server} was not started by this stack")
        resume()
        if server == "s3":  # its objects and policy come back with it; the bucket's rules are set again
            asyncio.run(self._prepare_bucket(self.settings))

    def _cluster(self) -> RabbitCluster:
        if self.rabbit_cluster is None:
            raise ValueError("this stack started no RabbitMQ cluster")
        return self.rabbit_cluster

    def _pair(self) -> PostgresPair:
        if self.postgres_pair is None:
            raise ValueError("this stack started no PostgreSQL standby")
        return self.postgres_pair

    def kill_rabbitmq_node(self, n: int) -> str:
        """SIGKILL node n of the cluster; returns its name."""
        cluster = self._cluster()
        cluster.kill(n)
        return cluster.nodes[n].node

    def resume_rabbitmq_node(self, n: int) -> None:
        """Start node n again on its data; it rejoins the cluster. Returns once it answers."""
        self._cluster().resume(n)

    def rabbitmq_leader(self, queue: str) -> int:
        """The node that leads a quorum queue of the cluster."""
        return self._cluster().leader(queue)

    def fail_over_postgres(self) -> None:
        """Kill the primary and promote the standby (clients find it through `target_session_attrs`)."""
        self._pair().fail_over()

    def rebuild_postgres_standby(self) -> None:
        """Bring the old primary back as the standby of the new one."""
        self._pair().rebuild_standby()

    def _track(self, label: str, process: ManagedProcess) -> None:
        self.processes[label] = process
        self.started.append((label, process))

    def stop(self) -> None:
        self.supervisor.stop()
        for name, thing in reversed(self.started):
            try:
                thing.stop()
            except Exception:  # keep stopping the rest; each failure is reported
                logger.exception("stopping %s failed", name)
        self.started.clear()
