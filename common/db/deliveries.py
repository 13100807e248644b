"""The `webhook_deliveries` outbox and the `webhook_keys` table: SQL as named constants and typed functions.

Deliveries are written by the statements that change generations (`outbox.recorded`); what is here reads them,
hands them to notifier replicas and records what became of each attempt.

Functions never commit: the caller owns the transaction.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from common.db.generations import Generation


class Event(StrEnum):
    """What a delivery reports: the generation started processing, or ended (any terminal status)."""

    START = "start"
    COMPLETED = "completed"


EVENTS = tuple(Event)
DEFAULT_EVENTS = (Event.COMPLETED,)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"  # a `start` still undelivered when the generation ended


@dataclass(frozen=True)
class Delivery:
    id: uuid.UUID
    generation_id: uuid.UUID
    user_id: str
    url: str
    host: str
    event: Event
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    changed_at: datetime
    generation: dict[str, Any]

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> Delivery:
        values = {name: record[name] for name in _FIELDS}
        values["event"] = Event(values["event"])
        values["status"] = DeliveryStatus(values["status"])
        return cls(**values)

    def generation_as_of_change(self) -> Generation:
        """The generation as the change left it (the row was stored as JSON: its types are restored here)."""
        return generation_of_snapshot(self.generation)

    def to_json(self) -> dict[str, Any]:
        """A delivery as `GET /api/predictions/{id}/deliveries` lists it."""
        return {
            "id": str(self.id),
            "event": self.event,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "lastStatusCode": self.last_status_code,
            "lastError": self.last_error,
            "nextAttemptAt": _iso(self.next_attempt_at),
            "deliveredAt": _iso(self.delivered_at),
            "createdAt": self.created_at.isoformat(),
        }


_FIELDS = tuple(field.name for field in fields(Delivery))
_GENERATION_FIELDS = {field.name: field for field in fields(Generation)}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def generation_of_snapshot(snapshot: dict[str, Any]) -> Generation:
    """A Generation from `to_jsonb` of its row: timestamps and the id come back as text, arrays as lists."""
    values: dict[str, Any] = {}
    for name in _GENERATION_FIELDS:
        value = snapshot.get(name)
        if isinstance(value, str) and name.endswith("_at"):
            value = datetime.fromisoformat(value)
        values[name] = value
    values["id"] = uuid.UUID(values["id"])
    return Generation.from_record(values)  # a mapping with the record's keys serves as one


LIST_FOR_GENERATION = """
SELECT * FROM webhook_deliveries WHERE generation_id = $1 ORDER BY created_at, event DESC
"""

# Pending again, with the same id (the receiver's deduplication key), whatever it ended as; never twice at once.
REDELIVER = """
UPDATE webhook_deliveries
SET status = 'pending', next_attempt_at = now(), delivered_at = NULL, changed_at = now(),
    leased_by = NULL, leased_until = NULL
WHERE id = $1 AND generation_id = $2 AND status <> 'pending'
RETURNING *
"""
GET = "SELECT * FROM webhook_deliveries WHERE id = $1 AND generation_id = $2"


async def list_for_generation(conn: asyncpg.Connection, generation_id: uuid.UUID) -> list[Delivery]:
    return [Delivery.from_record(row) for row in await conn.fetch(LIST_FOR_GENERATION, generation_id)]


async def redeliver(conn: asyncpg.Connection, generation_id: uuid.UUID, delivery_id: uuid.UUID) -> Delivery | None:
    """The delivery made pending again; None when it is pending already (or is not this generation's)."""
    record = await conn.fetchrow(REDELIVER, delivery_id, generation_id)
    return None if record is None else Delivery.from_record(record)


async def get(conn: asyncpg.Connection, generation_id: uuid.UUID, delivery_id: uuid.UUID) -> Delivery | None:
    record = await conn.fetchrow(GET, delivery_id, generation_id)
    return None if record is None else Delivery.from_record(record)


# The notifier's side. A claim takes due, unleased (or expired) deliveries, skipping rows another replica is
# claiming at this moment and destinations this replica already has at its limit.
CLAIM_DUE = """
WITH claimed AS (
    UPDATE webhook_deliveries SET leased_by = $1, leased_until = now() + make_interval(secs => $2)
    WHERE id IN (
        SELECT id FROM webhook_deliveries
        WHERE status = 'pending' AND next_attempt_at <= now()
          AND (leased_until IS NULL OR leased_until < now())
          AND NOT (host = ANY ($3::text[]))
        ORDER BY next_attempt_at
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    )
    RETURNING *
)
SELECT claimed.*, k.key AS signing_key, k.previous_key AS previous_signing_key, k.rotated_at AS key_rotated_at
FROM claimed LEFT JOIN webhook_keys k USING (user_id)
"""
RENEW_LEASES = """
UPDATE webhook_deliveries SET leased_until = now() + make_interval(secs => $2)
WHERE leased_by = $1 AND id = ANY ($3::uuid[]) AND status = 'pending'
"""
# Deliveries a stopping replica held but never attempted: free for the others at once, not after the lease.
RELEASE = """
UPDATE webhook_deliveries SET leased_by = NULL, leased_until = NULL
WHERE leased_by = $1 AND id = ANY ($2::uuid[]) AND status = 'pending'
"""
# When the earliest pending delivery falls due (NULL: none pending), so an idle notifier sleeps until then.
NEXT_DUE = """
SELECT min(greatest(next_attempt_at, coalesce(leased_until, next_attempt_at))) FROM webhook_deliveries
WHERE status = 'pending'
"""

# The outcome of one attempt, applied only while this replica still holds the lease (another replica that
# took over an expired lease decides instead). A `start` skipped meanwhile stays skipped unless it got through.
# When the receiver answered 410 ($7), every other pending delivery of this user to this URL ends too, in the
# same statement.
FINISH = """
WITH done AS (
    UPDATE webhook_deliveries
    SET status = CASE WHEN $3::text = 'delivered' OR status = 'pending' THEN $3::text ELSE status END,
        attempts = attempts + 1,
        last_status_code = $4,
        last_error = $5,
        next_attempt_at = CASE WHEN $3::text = 'pending' AND status = 'pending' THEN $6::timestamptz END,
        delivered_at = CASE WHEN $3::text = 'delivered' THEN now() END,
        leased_by = NULL, leased_until = NULL
    WHERE id = $1 AND leased_by = $2 AND status IN ('pending', 'skipped')
    RETURNING *
), ended AS (
    UPDATE webhook_deliveries o
    SET status = 'failed', last_error = $5, next_attempt_at = NULL, leased_by = NULL, leased_until = NULL
    FROM done
    WHERE $7::bool AND o.user_id = done.user_id AND o.url = done.url AND o.status = 'pending' AND o.id <> done.id
    RETURNING o.id
)
SELECT done.*, (SELECT count(*) FROM ended) AS ended_with_it FROM done
"""
# The outcomes of many attempts in one statement, each row as FINISH records it (the same rules, the same lease
# check: a row this replica no longer holds is left alone and missing from what is returned). No 410 here: the
# receiver's other deliveries are ended by FINISH. An id at most once per statement (a row is updated once).
FINISH_MANY = """
UPDATE webhook_deliveries d
SET status = CASE WHEN f.status = 'delivered' OR d.status = 'pending' THEN f.status ELSE d.status END,
    attempts = d.attempts + 1,
    last_status_code = f.status_code,
    last_error = f.error,
    next_attempt_at = CASE WHEN f.status = 'pending' AND d.status = 'pending' THEN f.next_attempt_at END,
    delivered_at = CASE WHEN f.status = 'delivered' THEN now() END,
    leased_by = NULL, leased_until = NULL
FROM unnest($2::uuid[], $3::text[], $4::int[], $5::text[], $6::timestamptz[])
    AS f (id, status, status_code, error, next_attempt_at)
WHERE d.id = f.id AND d.leased_by = $1 AND d.status IN ('pending', 'skipped')
RETURNING d.*
"""

PENDING_STATS = """
SELECT count(*) AS pending, extract(epoch FROM now() - min(changed_at)) AS oldest_s
FROM webhook_deliveries WHERE status = 'pending'
"""


async def claim_due(
    conn: asyncpg.Connection, replica: str, lease_s: float, busy_hosts: list[str], limit: int
) -> list[tuple[Delivery, SigningKeys]]:
    """Up to `limit` due deliveries leased to `replica` for `lease_s`, oldest due first, each with the signing
    keys of its user (made now for a user who never asked for theirs)."""
    rows = await conn.fetch(CLAIM_DUE, replica, lease_s, busy_hosts, limit)
    claimed = []
    for row in sorted(rows, key=lambda r: r["next_attempt_at"]):
        if row["signing_key"] is None:
            keys = SigningKeys(await ensure_key(conn, row["user_id"]), None, None)
        else:
            keys = SigningKeys(row["signing_key"], row["previous_signing_key"], row["key_rotated_at"])
        claimed.append((Delivery.from_record(row), keys))
    return claimed


async def renew_leases(conn: asyncpg.Connection, replica: str, lease_s: float, ids: list[uuid.UUID]) -> None:
    await conn.execute(RENEW_LEASES, replica, lease_s, ids)


async def release(conn: asyncpg.Connection, replica: str, ids: list[uuid.UUID]) -> None:
    await conn.execute(RELEASE, replica, ids)


async def next_due(conn: asyncpg.Connection) -> datetime | None:
    moment: datetime | None = await conn.fetchval(NEXT_DUE)
    return moment


async def finish(
    conn: asyncpg.Connection,
    delivery_id: uuid.UUID,
    replica: str,
    status: DeliveryStatus,
    status_code: int | None,
    error: str | None,
    next_attempt_at: datetime | None = None,
    *,
    gone: bool = False,
) -> tuple[Delivery, int] | None:
    """Record an attempt (and, for a 410, end the receiver's other pending deliveries): the delivery and how many
    others ended with it; None when this replica no longer held it. One statement: no transaction needed."""
    record = await conn.fetchrow(FINISH, delivery_id, replica, status, status_code, error, next_attempt_at, gone)
    return None if record is None else (Delivery.from_record(record), int(record["ended_with_it"]))


@dataclass(frozen=True)
class Finished:
    """One attempt's outcome as `finish` takes it, to be recorded among others by `finish_many`."""

    id: uuid.UUID
    status: DeliveryStatus
    status_code: int | None
    error: str | None
    next_attempt_at: datetime | None = None


async def finish_many(
    conn: asyncpg.Connection, replica: str, finished: Sequence[Finished]
) -> dict[uuid.UUID, Delivery]:
    """Record many attempts (none a 410) in one statement: the deliveries recorded, by id; an id missing is one
    this replica no longer held. Each id at most once. One statement: no transaction needed."""
    records = await conn.fetch(
        FINISH_MANY,
        replica,
        [f.id for f in finished],
        [f.status for f in finished],
        [f.status_code for f in finished],
        [f.error for f in finished],
        [f.next_attempt_at for f in finished],
    )
    return {record["id"]: Delivery.from_record(record) for record in records}


async def pending_stats(conn: asyncpg.Connection) -> tuple[int, float]:
    """(pending deliveries, age in seconds of the oldest change still pending, 0 when none)."""
    row = await conn.fetchrow(PENDING_STATS)
    return int(row["pending"]), float(row["oldest_s"] or 0)


# Signing keys.
KEY_PREFIX = "whsec_"

# Made on first use; concurrent first uses agree on the one that won.
MAKE_KEY = "INSERT INTO webhook_keys (user_id, key) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING"
GET_KEY = "SELECT key FROM webhook_keys WHERE user_id = $1"
ROTATE_KEY = """
INSERT INTO webhook_keys (user_id, key) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE
SET previous_key = webhook_keys.key, key = EXCLUDED.key, rotated_at = now()
RETURNING key
"""


def new_key() -> str:
    return KEY_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


@dataclass(frozen=True)
class SigningKeys:
    key: str
    previous_key: str | None
    rotated_at: datetime | None


async def ensure_key(conn: asyncpg.Connection, user_id: str) -> str:
    await conn.execute(MAKE_KEY, user_id, new_key())
    key: str = await conn.fetchval(GET_KEY, user_id)  # a statement of its own: it sees a concurrent first use
    return key


async def rotate_key(conn: asyncpg.Connection, user_id: str) -> str:
    key: str = await conn.fetchval(ROTATE_KEY, user_id, new_key())
    return key
