"""The persister's Prometheus metrics, served on `/metrics` by `common.probes.add_probes`."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Histogram

from common.predictions import Status


class Outcome(StrEnum):
    """What became of one event: the `outcome` label of `studio_persister_events_total`."""

    SUCCEEDED = Status.SUCCEEDED
    FAILED = Status.FAILED
    CANCELED = Status.CANCELED
    PROCESSING = Status.PROCESSING
    REJECTED = "rejected"  # success reported, but the output was refused: the generation ended `failed`
    DUPLICATE = "duplicate"  # the generation had already ended
    SPOOLED = "spooled"  # storage down: the outputs wait in the local spool, which finishes the generation
    LATE = "late"  # outputs reported after the generation ended: stored, its status unchanged
    STALE = "stale"  # `processing` for a generation already further along
    IGNORED = "ignored"  # a status that changes nothing (still queued)
    UNREADABLE = "unreadable"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    RETURNED = "returned"  # the retry could not be scheduled: back to the queue


class Reconciled(StrEnum):
    """What the reconciler made of one generation: the `result` label of `studio_persister_reconciled_total`."""

    PUBLISHED = "published"
    FOUND = "found"  # a generation with no prediction id found in Skytells' list
    UNFINISHED = "unfinished"
    UNKNOWN = "unknown"
    UNKNOWN_FAILED = "unknown_failed"
    UNSUBMITTED_FAILED = "unsubmitted_failed"
    RATE_LIMITED = "rate_limited"
    ERROR = "error"


EVENTS = Counter("studio_persister_events", "Events handled, by outcome", ["outcome"])
RETRIES = Counter("studio_persister_retries", "Events sent to a delay queue to be retried")
DEAD_LETTERS = Counter("studio_persister_dead_letters", "Events moved to studio.persister.dead")
PERSIST_SECONDS = Histogram(
    "studio_persister_persist_seconds",
    "Time to store every output of a succeeded prediction and mark it succeeded",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
LATE_OUTCOMES = Counter(
    "studio_persister_late_outcomes", "Outputs Skytells reported for a generation that had already ended, stored"
)
STORED_BYTES = Counter("studio_persister_stored_bytes", "Bytes of outputs written to S3")
RECONCILED = Counter(
    "studio_persister_reconciled", "Generations the reconciler looked up at Skytells, by result", ["result"]
)
