"""A row of `generations` as the code reads it."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import asyncpg

from common.predictions import Status


@dataclass(frozen=True)
class Generation:
    id: uuid.UUID
    user_id: str
    prediction_id: str | None
    model: str
    prompt: str
    status: Status
    output_key: str | None  # the first of `output_keys`: object keys in S3_BUCKET, never URLs
    output_keys: tuple[str, ...]
    error: str | None
    idempotency_key: str | None
    request_hash: str | None
    request_id: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    submit_timed_out_at: datetime | None
    checked_at: datetime | None
    input: dict[str, Any] = field(default_factory=dict)
    predict_time: float | None = None
    credits_used: float | None = None
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> Generation:
        values = {name: record[name] for name in _FIELDS}
        values["output_keys"] = tuple(values["output_keys"] or ())
        values["webhook_events"] = tuple(values["webhook_events"] or ())
        values["status"] = Status(values["status"])
        if isinstance(values["input"], str):  # read without the pool's JSON codec
            values["input"] = json.loads(values["input"])
        if values["credits_used"] is not None:  # numeric (exact sums in usage) arrives as a Decimal
            values["credits_used"] = float(values["credits_used"])
        return cls(**values)


# Looked up once: `fields()` walks the class's dataclass fields on every call.
_FIELDS = tuple(field.name for field in fields(Generation))


def one(record: asyncpg.Record | None) -> Generation | None:
    """The generation of a `fetchrow` that may have found none."""
    return None if record is None else Generation.from_record(record)
