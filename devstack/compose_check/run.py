"""The compose check's steps in order, each printed with its time; `make down` runs whatever happened."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from devstack.compose_check import engine, images, stack
from devstack.processes import StartError

logger = logging.getLogger("devstack.compose_check")


class Steps:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, title: str, action: Callable[[], object]) -> None:
        logger.info("==> %s", title)
        began = time.monotonic()
        outcome = action()
        said = f": {outcome}" if isinstance(outcome, str) and outcome else ""
        logger.info("    done in %.1f s%s", time.monotonic() - began, said)

    def total(self) -> float:
        return time.monotonic() - self.started


def _up() -> str:
    # `make up`, as an operator runs it: it writes .env on first use and builds Studio's image.
    try:
        stack.run(["make", "up"])
    except stack.CheckFailed as exc:
        raise stack.CheckFailed(f"{exc}\n{stack.diagnosis()}") from None
    found = stack.wait_healthy()
    healthy = ", ".join(sorted(f"{c.service}:{c.health or c.state}" for c in found))
    return f"{len(found)} containers: {healthy}; {stack.migrations_gate_the_services()}"


def _scale() -> str:
    return stack.scale(stack.SCALED)


def _clear() -> None:
    stack.run(["make", "down", "ARGS=-v"])


def _down() -> str:
    stack.run(["make", "down", "ARGS=-v"])
    left = stack.leftovers()
    if left:
        raise stack.CheckFailed(f"make down -v left: {', '.join(left)}")
    images.prune()
    return "nothing of the project is left: no container, volume or network"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    steps = Steps()
    try:
        steps(
            "install podman, runc, netavark, aardvark-dns, iptables, debootstrap, docker-compose (apt, when missing)",
            engine.install,
        )
    except StartError as exc:  # not root, or apt failed: nothing was started
        logger.error("FAILED: %s", exc)
        sys.exit(1)
    service = engine.Service()
    healthchecks = engine.Healthchecks(stack.PROJECT)
    failed = True
    try:
        steps(f"podman system service on {engine.SOCKET}", service.start)
        healthchecks.start()
        steps("clear what an interrupted run left", _clear)
        steps(
            "build the images (no registry)",
            lambda: images.build_all(stack.ROOT / "docker-compose.yml", stack.ROOT / "Dockerfile"),
        )
        steps("make up, then every service healthy", _up)
        steps("a generation on the simulator through api-proxy, its image read", stack.generate_one)
        steps(f"scale {', '.join(stack.SCALED)} to 2", _scale)
        steps("requests reach both API replicas", stack.requests_reach_every_api_replica)
        steps("kill a persister: restarted, no generation lost", stack.killed_persister_restarts_and_loses_nothing)
        steps("/metrics and /readyz not reachable through the proxies", stack.probes_not_exposed)
        failed = False
    except (stack.CheckFailed, StartError) as exc:
        logger.error("FAILED: %s", exc)
        logger.error("%s", stack.recent_logs())  # `make down` is about to remove the containers and their logs
    finally:
        try:
            steps("make down -v leaves nothing running", _down)
        except (stack.CheckFailed, StartError) as exc:
            logger.error("FAILED: %s", exc)
            failed = True
        healthchecks.stop()
        service.stop()
    logger.info("compose check %s in %.0f s", "FAILED" if failed else "passed", steps.total())
    sys.exit(1 if failed else 0)
