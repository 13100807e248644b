"""The notifier's Prometheus metrics, served on `/metrics` by `common.web.add_probes`."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram


class Outcome(StrEnum):
    """What became of one attempt: the `outcome` label of `studio_notifier_deliveries_total`."""

    DELIVERED = "delivered"
    RETRIED = "retried"  # failed this time; pending again
    EXPIRED = "expired"  # failed past NOTIFY_MAX_AGE_S: ended `failed`
    GONE = "gone"  # the receiver answered 410: ended `failed`, with its other pending deliveries
    FORBIDDEN = "forbidden"  # the destination resolves to an address it may not: ended `failed`, never connected
    LOST_LEASE = "lost_lease"  # another replica took the delivery over meanwhile; its outcome was not recorded


DELIVERIES = Counter("studio_notifier_deliveries", "Webhook delivery attempts, by outcome", ["outcome"])
ATTEMPT_SECONDS = Histogram(
    "studio_notifier_attempt_duration_seconds",
    "Time of one webhook delivery attempt, from resolving its host to the receiver's answer",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
PENDING = Gauge("studio_notifier_pending", "Webhook deliveries waiting to be delivered (every replica's)")
OLDEST_PENDING = Gauge(
    "studio_notifier_oldest_pending_seconds", "Age of the oldest change whose webhook delivery is still pending"
)
