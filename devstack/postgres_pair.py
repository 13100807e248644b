"""`PostgresPair` runs a primary and a streaming standby made from it with `pg_basebackup -R`, with synchronous
commit (`synchronous_standby_names = '*'`: a commit returns once the standby has it too), and fails over as an
operator would: the primary is killed, the standby promoted (`pg_ctl promote`), and the old primary rebuilt as
the new standby from a fresh base backup of the new primary (`Postgres.follow` and `Postgres.promote`).
"""

from __future__ import annotations

from pathlib import Path

from common.setting_parsers import database_hosts
from devstack.postgres import Postgres


class PostgresPair:
    """A primary and its synchronous streaming standby on two ports of 127.0.0.1 .
    `servers[primary]` takes writes; a client finds it with `target_session_attrs=read-write`."""

    def __init__(
        self, dsn: str, base_dir: Path | None = None, *, durable: bool = False, data_dir: Path | None = None
    ) -> None:
        ports = [port for _, port in database_hosts(dsn)][:2]
        kept = [None if data_dir is None else data_dir / f"server-{n}" for n in (1, 2)]
        self.servers = [
            Postgres(dsn, base_dir, durable=durable, data_dir=where, port=port, replicated=True)
            for port, where in zip(ports, kept, strict=True)
        ]
        self.primary = 0

    @property
    def standby(self) -> int:
        return 1 - self.primary

    def start(self, timeout: float = 120.0) -> PostgresPair:
        first, second = self.servers
        if (second.dir / "data" / "standby.signal").exists():  # kept from an earlier run: roles as they were
            first.start(timeout)
            second.resume(timeout)
        elif (first.dir / "data" / "standby.signal").exists():
            self.primary = 1
            second.start(timeout)
            first.resume(timeout)
        else:
            first.start(timeout)
            second.follow(first, timeout)
        return self

    def fail_over(self) -> None:
        """Kill the primary (an immediate shutdown) and promote the standby in its place."""
        self.servers[self.primary].crash()
        self.servers[self.standby].promote()
        self.primary = self.standby

    def rebuild_standby(self) -> None:
        """Bring the old primary back as the new primary's standby, from a fresh base backup."""
        self.servers[self.standby].follow(self.servers[self.primary])

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
