"""A throwaway RabbitMQ node from Debian's `rabbitmq-server`, installed with apt when missing.

The node runs as the `rabbitmq` user with every path it writes (data, logs, feature flags, cookie) inside a
temporary directory, on its own AMQP and distribution ports, so it never touches a system broker.
`RabbitCluster` runs several such nodes on loopback (each its own node name, ports and folder, one shared
Erlang cookie) and joins them into one cluster with `rabbitmqctl join_cluster`, as RabbitMQ's clustering guide
does by hand.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from devstack import apt
from devstack.processes import ManagedProcess, free_port, reachable_dir, wait_until

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RUN_AS = "rabbitmq"
# Erlang's port mapper daemon outlives the node that spawned it; when it was not running before our first node,
# the last of our nodes to stop takes it down too, so stopping leaves nothing of ours behind.
_epmd_ours = False


def _epmd(command: str) -> bool:
    try:
        return subprocess.run(["epmd", command], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def amqp_handshake(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when the port answers the AMQP 0-9-1 protocol header with a Connection.Start frame."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            frame = sock.recv(7)
            return len(frame) == 7 and frame[0] == 1
    except OSError:
        return False


class RabbitMQ:
    """A RabbitMQ node on 127.0.0.1 with the port, user, password and vhost an AMQP URL names."""

    def __init__(
        self, url: str, base_dir: Path | None = None, *, data_dir: Path | None = None, cookie: str | None = None
    ) -> None:
        """With `data_dir`, the node keeps its data there (queues, messages), across stops and runs. `cookie`:
        the Erlang cookie the nodes of one cluster share (a node alone makes its own)."""
        parts = urlsplit(url)
        self.url = url
        self.port = parts.port or 5672
        self.user = unquote(parts.username or "guest")
        self.password = unquote(parts.password or "guest")
        self.vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self.dist_port = free_port()
        self.kept = data_dir is not None
        runs_as = RUN_AS if os.geteuid() == 0 else None
        fresh = Path(tempfile.mkdtemp(prefix="studio-rmq-", dir=base_dir)) if data_dir is None else None
        self.dir = fresh or reachable_dir(data_dir or Path(), runs_as, "rabbitmq")
        self.process: ManagedProcess | None = None
        self.node = f"studio{self.port}@localhost"
        self.cookie = cookie

    def _prepare(self) -> None:
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(exist_ok=True)
        if self.cookie is not None:
            cookie = self.dir / ".erlang.cookie"  # HOME's: read by the node and by rabbitmqctl alike
            if cookie.exists():
                cookie.chmod(0o600)
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{self.port}",
                    f"default_user = {self.user}",
                    f"default_pass = {self.password}",
                    f"default_vhost = {self.vhost}",
                    "loopback_users = none",
                    "log.console = true",
                    "log.console.level = warning",
                    "log.file = false",
                    "disk_free_limit.absolute = 50MB",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            for path in [self.dir, *self.dir.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _env(self) -> dict[str, str]:
        d = str(self.dir)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": d,
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            # Erlang's distribution listener and port mapper would otherwise listen on every interface.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf",
            "RABBITMQ_CONF_ENV_FILE": f"{d}/rabbitmq-env.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{d}/advanced.config",
            "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
            "RABBITMQ_FEATURE_FLAGS_FILE": f"{d}/feature_flags",
            "RABBITMQ_PID_FILE": f"{d}/rabbitmq.pid",
            "RABBITMQ_PLUGINS_EXPAND_DIR": f"{d}/plugins-expand",
        }

    def start(self, timeout: float = 90.0) -> RabbitMQ:
        self.launch()
        return self.wait(timeout)

    def launch(self) -> None:
        """Start the node without waiting for it to answer (nodes of a cluster boot together)."""
        global _epmd_ours
        apt.ensure_installed("rabbitmq-server", SERVER)
        _epmd_ours = _epmd_ours or not _epmd("-names")
        self._prepare()
        self._spawn()

    def resume(self, timeout: float = 90.0) -> RabbitMQ:
        """Start the node (again, after `halt`) on the same data and ports."""
        self._spawn()
        return self.wait(timeout)

    def wait(self, timeout: float = 90.0) -> RabbitMQ:
        wait_until(
            f"RabbitMQ on port {self.port}",
            lambda: amqp_handshake("127.0.0.1", self.port),
            timeout,
            self.process,
        )
        return self

    def _spawn(self) -> None:
        self.process = ManagedProcess(
            "rabbitmq",
            [str(SERVER)],
            env=self._env(),
            log_path=self.dir / "rabbitmq.log",
            user=RUN_AS if os.geteuid() == 0 else None,
            cwd=self.dir,
        ).start()

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run `rabbitmqctl` against this node, as the user (hence with the cookie) the node runs as."""
        done = subprocess.run(
            [str(SERVER.with_name("rabbitmqctl")), "-n", self.node, *args],
            env=self._env(),
            user=RUN_AS if os.geteuid() == 0 else None,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def halt(self) -> None:
        """Stop the node, keeping its data, as a broker outage would."""
        if self.process is not None:
            self.process.stop(timeout=60)
            self.process = None

    def kill(self) -> None:
        """SIGKILL the node (a crash: nothing flushed, no goodbye to clients); `resume` starts it again."""
        if self.process is not None:
            self.process.kill()
            self.process.stop()
            self.process = None

    def stop(self) -> None:
        self.halt()
        if not self.kept:
            shutil.rmtree(self.dir, ignore_errors=True)
        if _epmd_ours:
            _epmd("-kill")  # refused by epmd while another node is still registered with it


class RabbitCluster:
    """One RabbitMQ node per AMQP URL (all on 127.0.0.1), joined into one cluster: the first node is the seed the
    others join. With `data_dir`, node n keeps its data in `data_dir/node-n` and the next start finds the
    cluster formed already."""

    def __init__(self, urls: list[str], base_dir: Path | None = None, *, data_dir: Path | None = None) -> None:
        kept = [None if data_dir is None else data_dir / f"node-{n}" for n in range(1, len(urls) + 1)]
        cookie = _shared_cookie(data_dir)
        self.nodes = [
            RabbitMQ(url, base_dir, data_dir=where, cookie=cookie) for url, where in zip(urls, kept, strict=True)
        ]

    def start(self, timeout: float = 180.0) -> RabbitCluster:
        # Together: a node of a formed cluster that did not stop last waits for its peers before it answers.
        for node in self.nodes:
            node.launch()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.wait(timeout), self.nodes))
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            if seed.node not in node.ctl("cluster_status", "--formatter", "json"):
                node.ctl("stop_app")
                node.ctl("join_cluster", seed.node)
                node.ctl("start_app")
                node.wait(timeout)
        return self

    def running(self) -> list[str]:
        """The node names the cluster reports running, as one of its live nodes sees them."""
        for node in self.nodes:
            if node.process is not None:
                status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
                return list(status.get("running_nodes", []))
        return []

    def leader(self, queue: str) -> int:
        """The index of the node that leads a quorum queue."""
        for node in self.nodes:
            if node.process is None:
                continue
            for line in node.ctl("list_queues", "-q", "--no-table-headers", "name", "leader").splitlines():
                name, _, leader = line.partition("\t")
                if name == queue:
                    return next(n for n, other in enumerate(self.nodes) if other.node == leader.strip())
        raise LookupError(f"no leader found for {queue}")

    def kill(self, n: int) -> None:
        self.nodes[n].kill()

    def resume(self, n: int, timeout: float = 120.0) -> None:
        self.nodes[n].resume(timeout)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def _shared_cookie(data_dir: Path | None) -> str:
    """The cluster's Erlang cookie: kept with its data, so a kept cluster's nodes know each other next time."""
    if data_dir is None:
        return secrets.token_hex(20)
    where = data_dir / "erlang.cookie"
    if not where.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        where.write_text(secrets.token_hex(20))
        where.chmod(0o600)
    return where.read_text().strip()
