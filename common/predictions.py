"""The prediction vocabulary: Studio's statuses, how Skytells' spellings map onto them, and a parsed prediction.

Every other module takes its status words from here; only SQL spells them again (the state machine lives in the
conditional UPDATEs of `common/db/generations/`). See docs/architecture.md for the state machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A generation's status as Studio's API shows it."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


# Terminal states never change again; active ones count against a user's quota.
TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELED})
ACTIVE = frozenset({Status.QUEUED, Status.PROCESSING})


class SkytellsStatus(StrEnum):
    """A prediction's status as Skytells spells it (both `cancelled` and `canceled` occur in the wild)."""

    PENDING = "pending"
    STARTING = "starting"
    QUEUED = "queued"
    STARTED = "started"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELED = "canceled"


_FROM_SKYTELLS: dict[str, Status] = {
    SkytellsStatus.PENDING: Status.QUEUED,
    SkytellsStatus.STARTING: Status.QUEUED,
    SkytellsStatus.QUEUED: Status.QUEUED,
    SkytellsStatus.STARTED: Status.PROCESSING,
    SkytellsStatus.PROCESSING: Status.PROCESSING,
    SkytellsStatus.SUCCEEDED: Status.SUCCEEDED,
    SkytellsStatus.FAILED: Status.FAILED,
    SkytellsStatus.CANCELLED: Status.CANCELED,
    SkytellsStatus.CANCELED: Status.CANCELED,
}


def from_skytells(skytells_status: str) -> Status:
    """Studio's status for a Skytells one; an unknown status counts as still running."""
    return _FROM_SKYTELLS.get(skytells_status.lower(), Status.PROCESSING)


class SkytellsEvent(StrEnum):
    """The callbacks a prediction's webhook can subscribe to (`completed` covers every terminal status)."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass(frozen=True)
class Prediction:
    """A prediction as Skytells describes it, in an API answer or a callback."""

    id: str
    status: str  # Skytells' own spelling
    output: tuple[str, ...]
    error: str | None
    model: str | None
    # `metrics.predict_time` and `metadata.billing.credits_used`, when Skytells reported them.
    predict_time: float | None = None
    credits_used: float | None = None

    @property
    def studio_status(self) -> Status:
        return from_skytells(self.status)


def _error_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        message = value.get("message") or value.get("detail")
        if isinstance(message, str) and message:
            return message
    try:
        return json.dumps(value)
    except RecursionError:  # a parser with a deeper limit (orjson's) read it; the stdlib cannot write it back
        return "error details nested too deeply to show"


def parse_prediction(payload: Any) -> Prediction:
    """Normalise a prediction: bare or in a `{type, created_at, data}` envelope; output as list, str or null.

    Raises ValueError when there is no usable prediction id and status.
    """
    if isinstance(payload, dict) and isinstance(payload.get("data"), dict) and "type" in payload:
        payload = payload["data"]
    if not isinstance(payload, dict):
        raise ValueError("payload is not a JSON object")
    pid, status = payload.get("id"), payload.get("status")
    if not isinstance(pid, str) or not pid.strip() or len(pid) > 200:
        raise ValueError("payload has no prediction id")
    if not isinstance(status, str) or not status.strip():
        raise ValueError("payload has no prediction status")
    raw_output = payload.get("output")
    if raw_output is None:
        output: tuple[str, ...] = ()
    elif isinstance(raw_output, str):
        output = (raw_output,)
    elif isinstance(raw_output, list) and all(isinstance(item, str) for item in raw_output):
        output = tuple(raw_output)
    else:
        raise ValueError("output must be a URL, a list of URLs, or null")
    model = payload.get("model")
    if isinstance(model, dict):
        model = model.get("name")
    status = status.strip().lower()
    error = _error_text(payload.get("error"))
    response = payload.get("response")
    if error is None and from_skytells(status) is Status.FAILED and isinstance(response, str) and response.strip():
        error = response.strip()  # where Skytells' SDK reads a failed prediction's message from
    metrics, metadata = payload.get("metrics"), payload.get("metadata")
    billing = metadata.get("billing") if isinstance(metadata, dict) else None
    return Prediction(
        id=pid.strip(),
        status=status,
        output=output,
        error=error,
        model=model if isinstance(model, str) else None,
        predict_time=_amount(metrics.get("predict_time") if isinstance(metrics, dict) else None),
        credits_used=_amount(billing.get("credits_used") if isinstance(billing, dict) else None),
    )


def _amount(value: Any) -> float | None:
    """A finite, non-negative number Skytells reported, else None (a garbled figure is no figure)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and 0 <= number < 1e12 else None
