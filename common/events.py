"""The completion event that travels from the gateway (or the reconciler) to the persister (docs/architecture.md)."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from common.predictions import Prediction, Status
from common.representation import dumps

Source = Literal["webhook", "reconciler"]

# Event ids are derived from what the callback says, so the same callback delivered twice (Skytells retries,
# `#sim:dup`, the reconciler finding what a callback already said) yields the same id and dedupes downstream.
_EVENT_NAMESPACE = uuid.UUID("5b0b6a38-6a8e-4d8e-9d0f-6f1f0c2e7a11")
_quoted = json.encoder.encode_basestring_ascii  # what `json.dumps` uses for a str, by default


def event_id_of(identity: str) -> str:
    """`str(uuid.uuid5(_EVENT_NAMESPACE, identity))`, computed without building the two UUID objects on the hot
    path (RFC 9562: SHA-1 of namespace and name, version 5, variant 10)."""
    digest = bytearray(hashlib.sha1(_EVENT_NAMESPACE.bytes + identity.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def identity_of(prediction: Prediction) -> str:
    """What an event's id is derived from: `json.dumps([id, status, output, error])`, spelled out with the
    stdlib's own string encoder (the same text, without building an encoder per call)."""
    output = ", ".join(map(_quoted, prediction.output))
    error = "null" if prediction.error is None else _quoted(prediction.error)
    return f"[{_quoted(prediction.id)}, {_quoted(prediction.status)}, [{output}], {error}]"


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
    # Studio's generation id, from the callback URL Studio gave Skytells: it finds a generation whose create
    # call never got to record its prediction id (the API died, or the call timed out at Studio's end).
    generation_id: str | None = None
    # Skytells' `metrics.predict_time` and `metadata.billing.credits_used`, when it reported them; optional in the
    # message, so events written before they existed still read.
    predict_time: float | None = None
    credits_used: float | None = None

    @classmethod
    def from_prediction(
        cls,
        prediction: Prediction,
        source: Source,
        request_id: str | None = None,
        generation_id: str | None = None,
    ) -> PredictionEvent:
        return cls(
            event_id=event_id_of(identity_of(prediction)),
            prediction_id=prediction.id,
            status=prediction.studio_status,
            skytells_status=prediction.status,
            output=prediction.output,
            error=prediction.error,
            source=source,
            request_id=request_id,
            generation_id=generation_id,
            predict_time=prediction.predict_time,
            credits_used=prediction.credits_used,
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
        if self.generation_id:
            body["generationId"] = self.generation_id
        if self.predict_time is not None:
            body["predictTime"] = self.predict_time
        if self.credits_used is not None:
            body["creditsUsed"] = self.credits_used
        return dumps(body)

    @classmethod
    def from_json(cls, raw: bytes) -> PredictionEvent:
        """Raises ValueError on anything that is not a well-formed event, however it is malformed."""
        try:
            body = json.loads(raw)  # not orjson: it refuses the escaped lone surrogates `dumps` may write
            if not isinstance(body, dict):
                raise ValueError("an event is a JSON object")
            texts = {name: body[name] for name in ("eventId", "predictionId", "status", "skytellsStatus")}
            if not all(isinstance(value, str) and value for value in texts.values()):
                raise ValueError("eventId, predictionId, status and skytellsStatus must be non-empty strings")
            output = body["output"]
            if not isinstance(output, list) or not all(isinstance(u, str) for u in output):
                raise ValueError("output must be a list of URLs")
            source = body["source"]
            if source not in ("webhook", "reconciler"):
                raise ValueError(f"unknown source {source!r}")
            optional = {name: body.get(name) for name in ("error", "requestId", "generationId")}
            if not all(value is None or isinstance(value, str) for value in optional.values()):
                raise ValueError("error, requestId and generationId must be strings when present")
            figures = {name: body.get(name) for name in ("predictTime", "creditsUsed")}
            if not all(_figure(value) for value in figures.values()):
                raise ValueError("predictTime and creditsUsed must be finite numbers when present")
            return cls(
                event_id=texts["eventId"],
                prediction_id=texts["predictionId"],
                status=Status(texts["status"]),
                skytells_status=texts["skytellsStatus"],
                output=tuple(output),
                error=optional["error"],
                source=source,
                received_at=datetime.fromisoformat(body["receivedAt"]),
                request_id=optional["requestId"],
                generation_id=optional["generationId"],
                predict_time=None if figures["predictTime"] is None else float(figures["predictTime"]),
                credits_used=None if figures["creditsUsed"] is None else float(figures["creditsUsed"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed event: {exc!r}") from None
        except RecursionError:  # nested deeper than the parser goes: as malformed as any other garbage
            raise ValueError("malformed event: nested too deeply") from None


def _figure(value: Any) -> bool:
    return value is None or (
        not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(float(value))
    )
