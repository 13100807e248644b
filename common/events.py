"""The completion event that travels from the gateway (or the reconciler) to the persister (docs/architecture.md)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from common.predictions import Prediction, Status

Source = Literal["webhook", "reconciler"]

# Event ids are derived from what the callback says, so the same callback delivered twice (Skytells retries,
# `#sim:dup`, the reconciler finding what a callback already said) yields the same id and dedupes downstream.
_EVENT_NAMESPACE = uuid.UUID("5b0b6a38-6a8e-4d8e-9d0f-6f1f0c2e7a11")


@dataclass(frozen=True)
class PredictionEvent:
    event_id: str
    prediction_id: str
    status: Status
    skytells_status: str
    output: tuple[str, ...]
    error: str | None
    source: Source
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    request_id: str | None = None

    @classmethod
    def from_prediction(cls, prediction: Prediction, source: Source, request_id: str | None = None) -> PredictionEvent:
        identity = json.dumps([prediction.id, prediction.status, list(prediction.output), prediction.error])
        return cls(
            event_id=str(uuid.uuid5(_EVENT_NAMESPACE, identity)),
            prediction_id=prediction.id,
            status=prediction.studio_status,
            skytells_status=prediction.status,
            output=prediction.output,
            error=prediction.error,
            source=source,
            request_id=request_id,
        )

    @property
    def routing_key(self) -> str:
        return f"prediction.{self.status}"

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "eventId": self.event_id,
            "predictionId": self.prediction_id,
            "status": self.status,
            "skytellsStatus": self.skytells_status,
            "output": list(self.output),
            "error": self.error,
            "source": self.source,
            "receivedAt": self.received_at.isoformat(),
        }
        if self.request_id:
            body["requestId"] = self.request_id
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PredictionEvent:
        """Raises ValueError on anything that is not a well-formed event."""
        try:
            body = json.loads(raw)
            output = body["output"]
            if not isinstance(output, list) or not all(isinstance(u, str) for u in output):
                raise ValueError("output must be a list of URLs")
            source = body["source"]
            if source not in ("webhook", "reconciler"):
                raise ValueError(f"unknown source {source!r}")
            error = body.get("error")
            return cls(
                event_id=str(body["eventId"]),
                prediction_id=str(body["predictionId"]),
                status=Status(body["status"]),
                skytells_status=str(body["skytellsStatus"]),
                output=tuple(output),
                error=None if error is None else str(error),
                source=source,
                received_at=datetime.fromisoformat(body["receivedAt"]),
                request_id=body.get("requestId"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed event: {exc!r}") from None
