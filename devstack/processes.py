"""Child processes: start, wait until they answer, stop them (and only them) again."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent


class StartError(RuntimeError):
    """A server could not be started; the message says which and why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own loopback URL)
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(what: str, ready: Callable[[], bool], timeout: float, process: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and process.exited:
            raise StartError(f"{what} exited with code {process.returncode}; its log:\n{process.tail()}")
        time.sleep(0.1)
    tail = f"; its log:\n{process.tail()}" if process is not None else ""
    raise StartError(f"{what} was not ready within {timeout:g}s{tail}")


# Where kept data lives when the user a server runs as cannot reach the data directory asked for (a checkout
# under /root, a pytest temp dir): the server's files must be reachable by that user.
SHARED_DATA = Path("/var/lib/studio-devstack")


def _reachable_by(path: Path, user: str) -> bool:
    """Can `user` traverse every directory down to `path`? (Only root runs a server as another user.)"""
    entry = pwd.getpwnam(user)
    for folder in (path, *path.parents):
        mode = folder.stat()
        if mode.st_uid == entry.pw_uid:
            continue
        if not (mode.st_mode & 0o001 or (mode.st_gid == entry.pw_gid and mode.st_mode & 0o010)):
            return False
    return True


def reachable_dir(data_dir: Path, user: str | None, server: str) -> Path:
    """`data_dir`, or, when `user` (the server's) could not reach it, a folder of its own named after it, which
    `data_dir/WHERE.txt` names; the next run with the same `data_dir` finds the data there again."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is None or _reachable_by(data_dir, user):
        return data_dir
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    kept = SHARED_DATA / f"{server}-{digest}"
    kept.mkdir(parents=True, exist_ok=True)
    SHARED_DATA.chmod(0o755)
    (data_dir / "WHERE.txt").write_text(f"{server}'s files for this folder are in {kept}\n")
    return kept


class ManagedProcess:
    """A child process whose output goes to a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path,
        cwd: Path = ROOT,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.log_path = log_path
        self.cwd = cwd
        self.user = user
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @classmethod
    def python(cls, name: str, module: str, *args: str, env: Mapping[str, str], log_path: Path) -> ManagedProcess:
        return cls(name, [sys.executable, "-m", module, *args], env=env, log_path=log_path)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=self.user,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    @property
    def exited(self) -> bool:
        return self.popen is not None and self.popen.poll() is not None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, signum: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.returncode

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)
