"""A throwaway PostgreSQL from the machine's own binaries: initdb into a temporary directory, then postgres.

PostgreSQL refuses to run as root, so when we are root the server runs as the `postgres` system user (created
if missing), owning its data directory.

A server can also follow another as its streaming standby and be promoted (`postgres_pair.py` runs the pair).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from common.setting_parsers import database_hosts
from devstack.processes import ManagedProcess, StartError, reachable_dir, wait_until

RUN_AS = "postgres"


def find_bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for candidate in reversed(candidates):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise StartError(
        "PostgreSQL binaries not found (looked in /usr/lib/postgresql/*/bin and PATH); "
        "install them with: apt-get install -y postgresql"
    )


def _ensure_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS], check=True)
    return RUN_AS


class Postgres:
    """PostgreSQL listening on 127.0.0.1 at the port, user, password and database a DSN names.

    Its directory is made under the system temp dir (not a caller's private one): the server user must reach it.
    With `data_dir`, it lives there instead (or, where the server's user cannot reach that folder, in a folder of
    its own under /var/lib/studio-devstack, which `data_dir/WHERE.txt` names) and is kept: a later start finds its
    databases again (and runs with fsync on, so what was committed survives a crash of the machine too).
    """

    def __init__(
        self,
        dsn: str,
        base_dir: Path | None = None,
        *,
        durable: bool = False,
        data_dir: Path | None = None,
        port: int | None = None,
        replicated: bool = False,
    ) -> None:
        """`port`: this server's, where the DSN names several hosts (default: the first host's). `replicated`:
        one of a `PostgresPair`, committing synchronously to its standby."""
        parts = urlsplit(dsn)
        self.dsn = dsn
        self.port = port or database_hosts(dsn)[0][1]
        self.replicated = replicated
        self.user = unquote(parts.username or "postgres")
        self.password = unquote(parts.password or "")
        self.database = (parts.path or "/").lstrip("/") or self.user
        self.durable = durable or data_dir is not None
        self.kept = data_dir is not None
        if data_dir is not None:
            self.dir = reachable_dir(data_dir, _ensure_user(), "postgres")
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="studio-pg-", dir=base_dir))
        self.process: ManagedProcess | None = None

    @property
    def sockets(self) -> Path:
        return self.dir / "sockets"

    def _own_dir(self) -> str | None:
        user = _ensure_user()
        self.sockets.mkdir(parents=True, exist_ok=True)
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (self.dir, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.dir.chmod(0o755)
        return user

    def start(self, timeout: float = 60.0) -> Postgres:
        bin_dir = find_bin_dir()
        data = self.dir / "data"
        if (data / "PG_VERSION").exists():  # kept from an earlier run: its users and databases are there
            return self.resume(timeout)
        user = self._own_dir()
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password or "postgres")
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        initdb = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            user=user,
            capture_output=True,
            text=True,
            cwd=self.dir,
        )
        if initdb.returncode != 0:
            raise StartError(f"initdb failed: {initdb.stderr.strip() or initdb.stdout.strip()}")
        self.resume(timeout)
        if self.database != "postgres":
            created = subprocess.run(
                [
                    str(bin_dir / "createdb"),
                    "-h",
                    str(self.sockets),
                    "-p",
                    str(self.port),
                    "-U",
                    self.user,
                    self.database,
                ],
                user=user,
                capture_output=True,
                text=True,
                cwd=self.dir,
                # Not waiting for a standby that does not exist yet (it is made from this server afterwards).
                env={**os.environ, "PGOPTIONS": "-c synchronous_commit=local"},
            )
            if created.returncode != 0 and "already exists" not in created.stderr:
                raise StartError(f"createdb failed: {created.stderr.strip()}")
        return self

    def resume(self, timeout: float = 60.0) -> Postgres:
        """Start the server (again, after `halt`) on the same data directory and port."""
        options = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            str(self.port),
            "-k",
            str(self.dir / "sockets"),
            "-c",
            "max_connections=300",
        ]
        if self.replicated:  # a commit waits for whichever standby streams from this server, when primary
            options += ["-c", "synchronous_standby_names=*", "-c", "synchronous_commit=on"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
            if not self.replicated:
                options += ["-c", "synchronous_commit=off"]
        self.process = ManagedProcess(
            "postgres",
            [str(find_bin_dir() / "postgres"), "-D", str(self.dir / "data"), *options],
            log_path=self.dir / "postgres.log",
            user=_ensure_user(),
            cwd=self.dir,
        ).start()
        wait_until(f"PostgreSQL on port {self.port}", self._accepts, timeout, self.process)
        return self

    def halt(self) -> None:
        """Stop the server, keeping its data, as an outage would.

        SIGINT is PostgreSQL's fast shutdown: it ends the sessions clients hold open, where SIGTERM (smart
        shutdown) would wait for every client to disconnect by itself.
        """
        if self.process is not None:
            self.process.signal(signal.SIGINT)
            if self.process.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.popen.wait(20)
            self.process.stop()
            self.process = None

    def crash(self) -> None:
        """An immediate shutdown, as `pg_ctl stop -m immediate` does (SIGQUIT to the postmaster): no
        checkpoint, sessions cut at once; the next `resume` runs crash recovery."""
        if self.process is not None and self.process.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.popen.pid, signal.SIGQUIT)
            try:
                self.process.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process.stop()
            self.process = None

    def follow(self, primary: Postgres, timeout: float = 120.0) -> Postgres:
        """Become a streaming standby of `primary`: whatever data this server had is replaced by a base backup of
        the primary's (`-R` writes the standby's connection to it), then the server starts as its standby."""
        self.halt()
        user = self._own_dir()
        shutil.rmtree(self.dir / "data", ignore_errors=True)
        backup = subprocess.run(
            [
                str(find_bin_dir() / "pg_basebackup"),
                "-D",
                str(self.dir / "data"),
                "-h",
                str(primary.sockets),
                "-p",
                str(primary.port),
                "-U",
                primary.user,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
            user=user,
            capture_output=True,
            text=True,
            cwd=self.dir,
            timeout=timeout,
        )
        if backup.returncode != 0:
            raise StartError(f"pg_basebackup failed: {backup.stderr.strip() or backup.stdout.strip()}")
        return self.resume(timeout)

    def promote(self, timeout: float = 60.0) -> None:
        """End recovery: a standby becomes a primary, taking writes (`pg_ctl promote` waits until it does)."""
        done = subprocess.run(
            [str(find_bin_dir() / "pg_ctl"), "promote", "-D", str(self.dir / "data"), "-t", str(int(timeout))],
            user=_ensure_user(),
            capture_output=True,
            text=True,
            cwd=self.dir,
            timeout=timeout + 10,
        )
        if done.returncode != 0:
            raise StartError(f"pg_ctl promote failed: {done.stderr.strip() or done.stdout.strip()}")

    def _accepts(self) -> bool:
        ready = subprocess.run(
            [str(find_bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            capture_output=True,
        )
        return ready.returncode == 0

    def stop(self) -> None:
        self.halt()
        if not self.kept:
            shutil.rmtree(self.dir, ignore_errors=True)
