"""The gateway's own Prometheus series: what became of each callback, and how long RabbitMQ took to confirm."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    BAD_SIGNATURE = "bad_signature"
    BAD_PAYLOAD = "bad_payload"
    BAD_ENCODING = "bad_encoding"
    TOO_LARGE = "too_large"
    BROKER_UNAVAILABLE = "broker_unavailable"


CALLBACKS = Counter("studio_webhook_callbacks", "Skytells callbacks received, by outcome", ["outcome"])
PUBLISH_SECONDS = Histogram(
    "studio_webhook_publish_seconds",
    "Time from publishing an event to RabbitMQ's confirm (or the failure that ended the wait)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IN_FLIGHT = Gauge("studio_webhook_publishes_in_flight", "Events published and still waiting for RabbitMQ's confirm")

# Every outcome is exported from the start, at 0, so a rate() over a series that never fired still works.
_COUNTERS = {outcome: CALLBACKS.labels(outcome.value) for outcome in Outcome}


def count(outcome: Outcome) -> None:
    _COUNTERS[outcome].inc()
