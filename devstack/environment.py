"""The environment a local stack runs with: the simulator as Skytells, every server on a loopback port, and the
cluster's extra nodes.

`DEVSTACK_RABBITMQ_NODES=3` asks for a RabbitMQ cluster of three nodes on loopback, and
`DEVSTACK_POSTGRES_STANDBY=1` for a PostgreSQL primary with a synchronous standby; `AMQP_URL` and `DATABASE_URL`
are extended to name them all (the next ports after the given one), unless they already list as many.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

from common.broker import node_urls
from common.setting_parsers import database_hosts
from common.settings import Settings
from devstack.processes import StartError, free_port

SIM_DEFAULTS = {"SIM_API_KEY": "sim-key", "SIM_WEBHOOK_SECRET": "sim-webhook-secret-local", "SIM_PORT": "8090"}

RABBITMQ_NODES_VAR, POSTGRES_STANDBY_VAR = "DEVSTACK_RABBITMQ_NODES", "DEVSTACK_POSTGRES_STANDBY"


def rabbitmq_nodes(environ: Mapping[str, str]) -> int:
    raw = environ.get(RABBITMQ_NODES_VAR, "").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 9:
        raise StartError(f"{RABBITMQ_NODES_VAR} must be a number of nodes from 1 to 9, not {raw!r}")
    return int(raw)


def postgres_standby(environ: Mapping[str, str]) -> bool:
    raw = environ.get(POSTGRES_STANDBY_VAR, "").strip().lower()
    if raw not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        raise StartError(f"{POSTGRES_STANDBY_VAR} must be 1 or 0, not {raw!r}")
    return raw in ("1", "true", "yes", "on")


def amqp_cluster_url(url: str, nodes: int, port_of: Callable[[int], int]) -> str:
    """`url` naming `nodes` nodes: those it lists, then more like its first on the ports `port_of(n)` gives."""
    listed = node_urls(url)
    first = urlsplit(listed[0])
    for n in range(len(listed), nodes):
        userinfo, at, _ = first.netloc.rpartition("@")
        netloc = f"{userinfo}{at}{first.hostname}:{port_of(n)}"
        listed.append(first._replace(netloc=netloc).geturl())
    return ",".join(listed)


def database_standby_url(dsn: str, port_of: Callable[[int], int]) -> str:
    """`dsn` in libpq's multi-host form naming a second host (`port_of(1)`) when it names one, and asking for
    the read-write one of them."""
    parts = urlsplit(dsn)
    hosts = database_hosts(dsn)
    if len(hosts) < 2:
        hosts.append((hosts[0][0], port_of(1)))
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = ",".join(f"{host}:{port}" for host, port in hosts)
    query = dict(parse_qsl(parts.query))
    query.setdefault("target_session_attrs", "read-write")
    return parts._replace(netloc=f"{userinfo}@{netloc}" if userinfo else netloc, query=urlencode(query)).geturl()


def cluster_env(environ: Mapping[str, str], *, free: bool = False) -> dict[str, str]:
    """`environ` with `AMQP_URL` and `DATABASE_URL` naming every node `DEVSTACK_RABBITMQ_NODES` and
    `DEVSTACK_POSTGRES_STANDBY` ask for. The added nodes listen on the ports after the first node's (stable
    across runs, as a kept cluster's node names need), or with `free` on free ports (a throwaway stack)."""
    env = dict(environ)
    defaults = Settings.from_env({})
    nodes = rabbitmq_nodes(env)
    amqp = env.get("AMQP_URL") or defaults.amqp_url
    if nodes > len(node_urls(amqp)):
        first = urlsplit(node_urls(amqp)[0]).port or 5672
        env["AMQP_URL"] = amqp_cluster_url(amqp, nodes, lambda n: free_port() if free else first + n)
    if postgres_standby(env):
        dsn = env.get("DATABASE_URL") or defaults.database_url
        primary = database_hosts(dsn)[0][1]
        env["DATABASE_URL"] = database_standby_url(dsn, lambda n: free_port() if free else primary + n)
    return env


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


def loopback_env(**settings: str) -> dict[str, str]:
    """This process's environment with every server and service on a free loopback port, the simulator as
    Skytells, then `settings` on top (the benches, the fault soak and the tests each start a stack of their own).

    `S3_PUBLIC_BASE_URL` is dropped: a value from the caller's shell would point links at another bucket."""
    webhook_port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "S3_PUBLIC_BASE_URL"}
    env |= {
        "DATABASE_URL": f"postgresql://studio:studio@127.0.0.1:{free_port()}/studio",
        "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "S3_BUCKET": "studio-bench",
        "SIM_PORT": str(free_port()),
        "API_PORT": str(free_port()),
        "WEBHOOK_PORT": str(webhook_port),
        "PERSISTER_PORT": str(free_port()),
        "NOTIFIER_PORT": str(free_port()),
        "PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{webhook_port}/api/webhooks",
        "LOG_LEVEL": "WARNING",
        **settings,
    }
    env.update(simulator_env(env))
    return cluster_env(env, free=True)
