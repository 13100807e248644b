"""Deliveries recorded with the change they report.

`recorded(update)` wraps each transition of `generations.py` and `reconciliation.py` (an `UPDATE generations
... RETURNING *`) in one statement that also inserts the deliveries its new status calls for and skips a `start`
still pending when the generation ends. Whichever process makes the change, inside a transaction or not, the
change and its deliveries commit together or not at all. Nothing that merely observes changes (the live
updates) writes a delivery.
"""

from __future__ import annotations

# The URL's host, lower-cased, for per-destination fairness (the API accepted only URLs urlsplit could read).
_HOST = r"'^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^]/]*\]|[^:/?#]*)'"


def recorded(update: str, told_if: str = "TRUE", *, also: str = "") -> str:
    """`update` (an UPDATE of generations ... RETURNING *) as one statement that also records its deliveries.

    The returned rows are the update's. A row now `processing` gets a `start` delivery, a terminal one a
    `completed` delivery, each only if its filter asks for it; `ON CONFLICT` makes a repeated transition (an
    answer and a callback both saying `processing`) record nothing twice. A terminal row's pending `start` is
    skipped: the receiver is told the outcome instead. `told_if`, a condition on the changed row `c`, narrows
    which rows are told at all. `also` adds common table expressions of the caller's (reading `changed`), since
    PostgreSQL allows data-modifying ones only at the top of a statement.
    """
    extra = f"{also.strip()}, " if also.strip() else ""
    return f"""
WITH changed AS (
{update.strip()}
), {extra}recorded AS (
    INSERT INTO webhook_deliveries (id, generation_id, user_id, url, host, event, changed_at, generation)
    SELECT gen_random_uuid(), c.id, c.user_id, c.webhook, coalesce(lower(substring(c.webhook from {_HOST})), ''),
           e.event, c.updated_at, to_jsonb(c)
    FROM changed c
    CROSS JOIN LATERAL (
        SELECT CASE WHEN c.status = 'processing' THEN 'start'
                    WHEN c.status IN ('succeeded', 'failed', 'canceled') THEN 'completed' END AS event
    ) e
    WHERE c.webhook IS NOT NULL AND e.event = ANY (c.webhook_events) AND ({told_if})
    ON CONFLICT ON CONSTRAINT one_delivery_per_event DO NOTHING
), skipped AS (
    UPDATE webhook_deliveries d SET status = 'skipped', next_attempt_at = NULL
    FROM changed c
    WHERE d.generation_id = c.id AND d.event = 'start' AND d.status = 'pending'
      AND c.status IN ('succeeded', 'failed', 'canceled')
)
SELECT * FROM changed
"""
