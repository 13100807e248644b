"""`python -m chaos [--generations N] [--seed S]`: the fault soak, from a fresh stack to the balance.

The load and the faults run side by side; once both are over the soak waits for every generation to end
(the drain), then checks the balance against the simulator's truth and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from standardwebhooks import Webhook

from chaos import balance
from chaos.cluster import NOTIFY_TIMEOUT_S, Cluster
from chaos.driver import USERS, Driver, drive
from chaos.impact import Impact, measured
from chaos.impact import render as impact_report
from chaos.receivers import Receivers
from chaos.report import Summary, render
from chaos.schedule import Fault, FaultKind, fault_schedule, output_ttl_s, workload
from common import log as logs
from devstack.stack import Server

logger = logging.getLogger("chaos")

SERVICE_FAULTS = {
    FaultKind.API: "api",
    FaultKind.WEBHOOK: "webhook",
    FaultKind.PERSISTER: "persister",
    FaultKind.NOTIFIER: "notifier",
}
SERVER_FAULTS: dict[FaultKind, Server] = {
    FaultKind.RABBITMQ: "rabbitmq",
    FaultKind.POSTGRES: "postgres",
    FaultKind.S3: "s3",
}
SETTLE_S = 10.0  # the load goes on this long after the last fault's part is back
LOAD_END_S = 120.0  # how long the users get, once drained, to finish what they were doing (deletions)
# The loss paths the workload is built to reach, each by a line the services log when they take it: the table
# shows the soak did reach them (a soak that never took a path proves nothing about it).
REACHED = {
    "create answered unclearly, waited": "no clear answer to the create call",
    "prediction bound by its callback's reference": "prediction bound to its generation by the id in its callback",
    "prediction found in Skytells' list": "found the prediction of a generation that had none recorded",
    "outputs kept in the spool": "outputs kept in the local spool",
    "spooled outputs stored": "spooled outputs stored",
    "output found stored, not downloaded again": "already stored by an earlier attempt",
    "late outcome stored": "late outcome stored",
}


MEASURED = (FaultKind.RABBITMQ, FaultKind.POSTGRES)  # what each of these cost is reported (chaos/impact.py)


async def _inflict(cluster: Cluster, fault: Fault, impacts: list[Impact]) -> None:
    logger.warning("fault: %s (down %.1f s, replica %d)", fault.kind, fault.down_s, fault.replica)
    if fault.kind in SERVICE_FAULTS:
        await cluster.kill_replica(SERVICE_FAULTS[fault.kind], fault.replica)
    elif fault.kind in MEASURED:
        outage = cluster.outage(SERVER_FAULTS[fault.kind], fault.down_s)
        impacts.append(
            await measured(cluster.fault_name(fault.kind), outage, cluster.replica_ports, cluster.ports["webhook"])
        )
    else:
        await cluster.outage(SERVER_FAULTS[fault.kind], fault.down_s)


async def _faults(
    cluster: Cluster, schedule: list[Fault], started: float, done: Counter[FaultKind], impacts: list[Impact]
) -> None:
    for fault in schedule:
        await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
        await _inflict(cluster, fault, impacts)
        done[fault.kind] += 1


async def _drain(cluster: Cluster, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # a server still coming back: ask again
            if await balance.unsettled(cluster.stack.settings) == 0:
                return True
        await asyncio.sleep(1.0)
    return False


def _reached(logs_dir: Path) -> dict[str, int]:
    counts = dict.fromkeys(REACHED, 0)
    for log in logs_dir.glob("*.log"):
        with log.open(errors="replace") as lines:
            for line in lines:
                for path, marker in REACHED.items():
                    counts[path] += marker in line
    return counts


async def _learn_keys(api: str, tokens: dict[str, str], receivers: Receivers) -> None:
    """Each user's webhook key, as a client reads it before it trusts its first webhook."""
    async with httpx.AsyncClient(timeout=30) as client:
        for user, token in tokens.items():
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(
                        f"{api}/api/webhooks/secret", headers={"Authorization": f"Bearer {token}"}
                    )
                    if response.status_code == 200:
                        receivers.keys[user] = Webhook(response.json()["key"])
                        break
                await asyncio.sleep(1.0)


async def soak(
    generations: int,
    seed: int,
    drain_timeout_s: float = 600.0,
    work_dir: Path | None = None,
    *,
    rabbitmq_nodes: int = 1,
    postgres_standby: bool = False,
    impacts: list[Impact] | None = None,
) -> Summary:
    """`rabbitmq_nodes`, `postgres_standby`: the infrastructure (chaos/cluster.py); `impacts` receives what each
    RabbitMQ and PostgreSQL fault cost."""
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="studio-chaos-"))
    logger.warning("chaos: %d generations, seed %d; the services' logs go to %s/logs", generations, seed, work_dir)
    cluster = Cluster(work_dir, output_ttl_s(generations), rabbitmq_nodes, postgres_standby)
    impacts = [] if impacts is None else impacts
    schedule = fault_schedule(seed, generations)
    plans = workload(seed, generations)
    window_s = schedule[-1].at_s + schedule[-1].down_s + SETTLE_S
    receivers = Receivers(NOTIFY_TIMEOUT_S)
    try:
        await cluster.start()
        await receivers.start()
        tokens = {f"chaos-user-{n:03d}": cluster.token(f"chaos-user-{n:03d}") for n in range(USERS)}
        await _learn_keys(cluster.api_url, tokens, receivers)
        driver = Driver(cluster.api_url, tokens, receivers)
        stop_following = asyncio.Event()
        done: Counter[FaultKind] = Counter()
        started = time.monotonic()
        # The `gone` receivers answer 410 through the middle of the load, 200 before and after.
        receivers.gone_between(started + window_s * 0.3, started + window_s * 0.6)
        try:
            load = asyncio.create_task(drive(driver, plans, generations / window_s, stop_following))
            await _faults(cluster, schedule, started, done, impacts)
            with contextlib.suppress(TimeoutError):  # a create still unsettled then shows as not drained
                await asyncio.wait_for(driver.created_all.wait(), drain_timeout_s)
            load_s = time.monotonic() - started
            logger.warning("faults over after %.0f s, %d creates unsettled; draining", load_s, driver.creates_left)
            drained = driver.created_all.is_set() and await _drain(cluster, drain_timeout_s)
            drain_s = time.monotonic() - started - load_s
            stop_following.set()
            # Deletions under way finish first (each within its attempts); anything else still waiting stops.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(load), LOAD_END_S)
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
        finally:
            await driver.close()
        async with httpx.AsyncClient(timeout=60) as client:
            found = await balance.check(cluster.stack.settings, client, cluster.simulator_url, driver.record, receivers)
        restarts = cluster.self_restarts
        reached = _reached(work_dir / "logs")
        return Summary(generations, seed, found, driver.record, done, restarts, load_s, drain_s, drained, reached)
    finally:
        await receivers.stop()
        await cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--generations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--rabbitmq-nodes", type=int, default=1, help="run RabbitMQ as a cluster of this many nodes; faults kill one"
    )
    parser.add_argument(
        "--postgres-standby",
        action="store_true",
        help="run PostgreSQL with a synchronous standby; faults kill the primary and promote the standby",
    )
    args = parser.parse_args(argv)
    if args.generations < 1:
        parser.error("--generations must be at least 1")
    if not 1 <= args.rabbitmq_nodes <= 9 or args.rabbitmq_nodes == 2:
        parser.error("--rabbitmq-nodes must be 1, or 3 to 9 (a quorum of two nodes cannot lose one)")
    logs.configure("chaos", "WARNING")
    impacts: list[Impact] = []
    summary = asyncio.run(
        soak(
            args.generations,
            args.seed,
            rabbitmq_nodes=args.rabbitmq_nodes,
            postgres_standby=args.postgres_standby,
            impacts=impacts,
        )
    )
    postgres = "a primary and a synchronous standby" if args.postgres_standby else "one server"
    mode = f"chaos: rabbitmq {args.rabbitmq_nodes} node(s), postgres {postgres}"
    sys.stdout.write("\n".join([mode, impact_report(impacts), render(summary)]) + "\n")
    return 0 if summary.ok else 1
