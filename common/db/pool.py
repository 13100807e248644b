"""The asyncpg pool, created and closed by each service's clean-up context."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

# What a query meets while PostgreSQL is down, restarting or recovering, or when it went away mid-query: worth
# retrying shortly, never the caller's fault. Services answer it 503 with Retry-After, not 500. During a
# failover too: no host is the primary yet (every host refused, or each is a standby: TargetServerAttribute-
# NotMatched), or a session still on a server that has become a standby is refused a write.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.TargetServerAttributeNotMatched,
)


def unavailable(exc: BaseException) -> bool:
    """Whether a failure started with the database going away: asyncpg reports a connection lost inside a
    transaction as a plain InterfaceError at the transaction's exit, chained to the error that began it."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, UNAVAILABLE):
            return True
        if isinstance(cause, asyncpg.InterfaceError) and "connection is closed" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def database_failure(exc: BaseException) -> bool:
    """Whether a failure is the database's (down, as `unavailable` says, or refusing the statement) rather than a
    fault in our code: what a caller that must not leave a half-done write retries, or logs without a traceback."""
    return unavailable(exc) or isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo: see `create_pool`."""


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, stateless: bool = False, **kwargs: Any
) -> asyncpg.Pool:
    """`stateless`: the caller's queries leave no session state behind (advisory locks only transaction-scoped,
    no LISTEN, SET or cursors), so the reset asyncpg sends on every release (`pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`, one more round trip per request) is skipped. An open transaction is still rolled
    back. The persister's one session lock (the reconciler's) is released explicitly, or its connection ended."""
    if stateless:
        kwargs["reset"] = _keep_session
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=30, **kwargs
    )
    return pool
