"""The notifier's rules that need no server: Retry-After, the backoff's bounds, the signatures around a rotation
(checked with the `standardwebhooks` package)."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from common.db.deliveries import SigningKeys, new_key
from services.notifier.dispatcher import backoff
from services.notifier.sender import retry_after, signature

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("86400", 3600.0),  # at most an hour
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),  # a date already past: at once
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_retry_after_as_seconds_or_a_date_capped_at_an_hour(header, seconds):
    assert retry_after(header, NOW, 3600) == seconds


def test_backoff_is_full_jitter_doubling_from_the_base_up_to_the_cap():
    for attempts, ceiling in ((0, 5), (1, 10), (3, 40), (20, 3600)):
        draws = [backoff(attempts, 5, 3600) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling / 2  # spread over the whole range, not pinned to its bottom


def _headers(value: str, moment: datetime) -> dict[str, str]:
    return {"webhook-id": "msg_1", "webhook-timestamp": str(int(moment.timestamp())), "webhook-signature": value}


def test_within_the_overlap_both_keys_sign_and_after_it_only_the_new_one():
    old, new = new_key(), new_key()
    moment = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()), UTC)
    body = b'{"type":"generation.completed"}'

    fresh = signature(SigningKeys(new, old, moment - timedelta(hours=1)), "msg_1", moment, body, 86400)
    assert len(fresh.split(" ")) == 2
    for key in (old, new):
        Webhook(key).verify(body, _headers(fresh, moment))

    later = signature(SigningKeys(new, old, moment - timedelta(days=2)), "msg_1", moment, body, 86400)
    assert len(later.split(" ")) == 1
    Webhook(new).verify(body, _headers(later, moment))
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, _headers(later, moment))


def test_keys_are_whsec_and_32_random_bytes():
    key = new_key()
    assert key.startswith("whsec_") and len(key) == len("whsec_") + 44 and key != new_key()
