"""The webhooks' part of the balance: what Studio recorded to deliver against what the soak's receivers got.

- lost: a generation created with a webhook that has no `completed` delivery, or whose `completed` never
  reached its receiver with the final status under a signature that verifies;
- wrong: a request whose signature does not verify, a delivery that ended `failed` other than by its receiver's
  410 (or was attempted after that 410), one marked delivered that no request with the final status backs;
- extra: a request for a delivery Studio never recorded, or about a generation that asked for none.
A generation its user deleted took its deliveries with it: one still pending was dropped, as deletion promises,
so it is owed none, and a request sent for it before it went is checked for its signature only.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import asyncpg

from chaos.driver import Record
from chaos.receivers import Kind, Received, Receivers

ROWS = """
SELECT d.id::text AS delivery_id, d.generation_id::text AS generation_id, d.event, d.status, g.status AS final
FROM webhook_deliveries d JOIN generations g ON g.id = d.generation_id
"""
PENDING = "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
TOLERANCE_S = 1.0  # an attempt under way when the 410 came may arrive a moment after it


async def pending(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(PENDING)
    return count


def _payload(received: Received) -> dict[str, Any]:
    try:
        payload: dict[str, Any] = json.loads(received.body)
        return payload
    except ValueError:
        return {}


def check(
    rows: list[asyncpg.Record],
    receivers: Receivers,
    record: Record,
    lost: list[str],
    wrong: list[str],
    extra: list[str],
) -> Counter[str]:
    """Appends its findings; returns the deliveries by event and status, and the requests by answer."""
    counts: Counter[str] = Counter(f"delivery {row['event']} {row['status']}" for row in rows)
    counts.update(f"requests answered {r.answered or 'nothing'}" for r in receivers.received)
    recorded = {row["delivery_id"]: row for row in rows}
    requests: defaultdict[str, list[Received]] = defaultdict(list)
    for received in receivers.received:
        requests[received.delivery_id].append(received)
        row = recorded.get(received.delivery_id)
        if row is None and _payload(received).get("data", {}).get("id") in record.deleted:
            if not received.verified:
                wrong.append(f"delivery {received.delivery_id}: its signature does not verify")
        elif row is None:
            extra.append(f"a request with webhook-id {received.delivery_id!r} that Studio never recorded")
        elif row["generation_id"] not in record.webhooks:
            extra.append(f"a delivery for generation {row['generation_id']}, which asked for none")
        elif not received.verified:
            wrong.append(f"delivery {received.delivery_id}: its signature does not verify")
    gone_answers: defaultdict[str, list[float]] = defaultdict(list)
    for received in receivers.received:
        if received.answered == 410:
            gone_answers[received.user].append(received.at)
    completed = {row["generation_id"]: row for row in rows if row["event"] == "completed"}
    for generation_id, plan in record.webhooks.items():
        if generation_id in record.deleted:
            continue
        row = completed.get(generation_id)
        if row is None:
            lost.append(f"generation {generation_id} asked for a webhook and has no completed delivery")
            continue
        if row["status"] == "pending":
            lost.append(f"generation {generation_id}: its completed delivery is still pending")
            continue
        tried = requests[row["delivery_id"]]
        if row["status"] == "failed":
            user = record.accepted[generation_id]
            last_410 = max(gone_answers[user], default=None)
            last_try = max((r.at for r in tried), default=None)
            if plan.webhook is not Kind.GONE or last_410 is None:
                lost.append(f"generation {generation_id}: its completed delivery ended failed ({plan.webhook})")
            elif last_try is not None and last_try > last_410 + TOLERANCE_S:
                wrong.append(f"generation {generation_id}: its delivery was attempted after the receiver's 410")
            continue
        good = [
            r
            for r in tried
            if r.verified
            and r.answered is not None
            and 200 <= r.answered < 300
            and _payload(r).get("type") == "generation.completed"
            and _payload(r).get("data", {}).get("id") == generation_id
            and _payload(r).get("data", {}).get("status") == row["final"]
        ]
        if not good:
            what = "wrong" if tried else "lost"
            finding = (
                f"generation {generation_id}: no request delivered its final status {row['final']} ({plan.webhook})"
            )
            (wrong if what == "wrong" else lost).append(finding)
    return counts
