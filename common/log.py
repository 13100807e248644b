"""JSON-lines logging, configured once per process.

Ids that concern a generation travel in a context variable (`bind`), so every line logged while handling one
carries them without each call site passing them along.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

_EMPTY: dict[str, Any] = {}  # never mutated: `annotate` leaves it alone
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("studio_log_context", default=_EMPTY)  # noqa: B039

# LogRecord attributes that are not user data.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context.get())
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Warnings and a crash's traceback would otherwise reach stderr as plain text, breaking one-JSON-per-line.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    for noisy in ("aiormq", "aio_pika", "botocore", "aiobotocore", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("studio").critical("uncaught exception, exiting", exc_info=(kind, value, tb))


@contextmanager
def bind(**ids: Any) -> Iterator[None]:
    """Add ids (generation_id, prediction_id, request_id...) to every line logged inside the block."""
    merged = {**_context.get(), **{k: v for k, v in ids.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict[str, Any]:
    """The ids of the innermost `bind` block, as `annotate` leaves them; read it, never change it."""
    return _context.get()


def annotate(**ids: Any) -> None:
    """Add ids to the innermost `bind` block, for the rest of it, including lines its caller logs after an
    inner function returns (the persister learns the generation id only after finding the row). Outside any
    block it does nothing, so it never leaks ids into unrelated lines."""
    current = _context.get()
    if current is _EMPTY:
        return
    current.update({k: v for k, v in ids.items() if v is not None})
