"""The gateway through a three-node RabbitMQ cluster beside the same on one node, for scale (no goal).

On a cluster every quorum queue keeps a member on each of three nodes, and RabbitMQ confirms a publish once a
majority of them has written it: the gateway's confirmed publish then costs a round between nodes. The same
signed callbacks as `bench.gateway`, the same closed loop of 32 connections, one gateway against one node, then
against the cluster (its `AMQP_URL` naming all three), each measured after the other in the same run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.gateway import CONNECTIONS, SECRET, _callbacks, _peak, serving
from bench.table import Row
from devstack.environment import amqp_cluster_url
from devstack.processes import free_port
from devstack.rabbitmq import RabbitCluster, RabbitMQ

NAME = "cluster"
NODES = 3


def _gateway(url: str, requests: Path, work: Path, label: str) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "AMQP_URL": url, "WEBHOOK_PORT": str(port), "SKYTELLS_WEBHOOK_SECRET": SECRET}
    argv = [sys.executable, "-m", "services.webhook"]
    with serving(label, argv, env, work, f"http://127.0.0.1:{port}/readyz") as gateway:
        return _peak(port, requests, gateway.pid)


def run() -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="studio-bench-cluster-"))
    requests = _callbacks(work)
    single = RabbitMQ(f"amqp://guest:guest@127.0.0.1:{free_port()}/").start()
    try:
        one = _gateway(single.url, requests, work, "gateway-one-node")
    finally:
        single.stop()
    url = amqp_cluster_url(f"amqp://guest:guest@127.0.0.1:{free_port()}/", NODES, lambda _: free_port())
    cluster = RabbitCluster(url.split(","))
    try:
        cluster.start()
        three = _gateway(url, requests, work, "gateway-cluster")
    finally:
        cluster.stop()
    ratio = three["rate"] / one["rate"] if one["rate"] else 0.0
    return [
        Row(NAME, f"gateway on one RabbitMQ node ({CONNECTIONS} conns, closed loop)", f"{one['rate']:,.0f}/s"),
        Row(NAME, f"gateway on a {NODES}-node cluster, quorum queues on every node", f"{three['rate']:,.0f}/s"),
        Row(NAME, f"gateway: {NODES}-node cluster / one node, for scale", f"{ratio:.2f}"),
        Row(
            NAME,
            "gateway p99 at peak: one node / cluster",
            f"{one['p99_ms']:.1f} ms / {three['p99_ms']:.1f} ms",
        ),
    ]
