"""The container engine of the compose check: rootful podman from Debian's packages, configured by the
containers.conf beside this file, serving the Docker API on a unix socket for docker-compose, and running the
healthchecks that podman leaves to systemd timers (there is no systemd here), so that
`depends_on: condition: service_healthy` works."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devstack import apt
from devstack.processes import StartError

logger = logging.getLogger(__name__)

CONTAINERS_CONF = Path(__file__).resolve().parent / "containers.conf"
SOCKET = Path("/run/studio-compose-check/podman.sock")
# Package -> a file it installs. docker-compose is the one the tests render the file with, without the Docker
# engine it recommends.
PACKAGES = {
    "podman": Path("/usr/bin/podman"),
    "runc": Path("/usr/sbin/runc"),
    "netavark": Path("/usr/lib/podman/netavark"),
    "aardvark-dns": Path("/usr/lib/podman/aardvark-dns"),
    "iptables": Path("/usr/sbin/iptables"),  # netavark's NAT and published ports
    "debootstrap": Path("/usr/sbin/debootstrap"),
}
COMPOSE_BINARY = Path("/usr/bin/docker-compose")


def install() -> None:
    for package, binary in PACKAGES.items():
        apt.ensure_installed(package, binary)
    apt.ensure_installed("docker-compose", COMPOSE_BINARY, recommends=False)


def environment() -> dict[str, str]:
    """What podman and docker-compose need to find each other, over this process's environment."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), "DOCKER_HOST": f"unix://{SOCKET}"}


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], env=environment(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise StartError(f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-3000:]}")
    return done


class Service:
    """`podman system service` on SOCKET for as long as the check runs."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        SOCKET.parent.mkdir(parents=True, exist_ok=True)
        SOCKET.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{SOCKET}"],
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not SOCKET.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise StartError(f"podman system service did not open {SOCKET}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        SOCKET.unlink(missing_ok=True)


def project_containers(project: str, *, all_states: bool = False) -> list[dict[str, Any]]:
    """`podman ps` of the compose project's containers, as podman's JSON."""
    args = ["ps", "--format", "json", "--filter", f"label=com.docker.compose.project={project}"]
    rows: list[dict[str, Any]] = json.loads(podman(*args, *(["--all"] if all_states else [])).stdout or "[]")
    return rows


def inspect(container: str) -> dict[str, Any]:
    """`podman container inspect`, as podman's JSON."""
    rows: list[dict[str, Any]] = json.loads(podman("container", "inspect", container).stdout)
    return rows[0]


class Healthchecks:
    """Runs `podman healthcheck run` for every running container of a project that declares a healthcheck, at
    the interval it declares, in the background, as Docker's engine would."""

    def __init__(self, project: str, poll_s: float = 1.0) -> None:
        self.project = project
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthchecks", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="healthcheck")
        self._intervals: dict[str, float | None] = {}  # container id -> its interval (None: no healthcheck)
        self._due: dict[str, float] = {}
        self._running: dict[str, Future[object]] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _interval(self, container: str) -> float | None:
        if container not in self._intervals:
            try:
                config = inspect(container)["Config"]
            except StartError:  # gone meanwhile
                return None
            check = config.get("Healthcheck") or {}
            if not check.get("Test") or check["Test"] == ["NONE"]:
                self._intervals[container] = None
            else:  # nanoseconds; Docker's default when unset
                self._intervals[container] = (check.get("Interval") or 30_000_000_000) / 1e9
        return self._intervals[container]

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._round()
            except (StartError, subprocess.SubprocessError, ValueError, KeyError) as exc:  # the next round retries
                logger.warning("healthchecks: %s", exc)

    def _round(self) -> None:
        now = time.monotonic()
        for row in project_containers(self.project):
            container = str(row["Id"])
            interval = self._interval(container)
            if interval is None or now < self._due.get(container, 0):
                continue
            busy = self._running.get(container)
            if busy is not None and not busy.done():
                continue
            self._due[container] = now + interval
            self._running[container] = self._pool.submit(
                podman, "healthcheck", "run", container, check=False, timeout=60
            )
