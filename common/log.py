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

import orjson
from aiohttp.http_exceptions import HttpProcessingError

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
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # a lone surrogate in some text: the stdlib escapes what orjson refuses
            return json.dumps(line, default=str)


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Nothing we write uses the caller's file and line, thread or process names: skip collecting them on every
    # record (the logging HOWTO's "Optimization" section), a tenth of the cost of a line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Warnings and a crash's traceback would otherwise reach stderr as plain text, breaking one-JSON-per-line.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    for noisy in ("aiormq", "aio_pika", "botocore", "aiobotocore", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in server.filters):
        server.addFilter(_MalformedRequests())


class _MalformedRequests(logging.Filter):
    """aiohttp logs every request it cannot parse (a bad request line, a control byte in a header, broken
    chunking or compression) as an error with its parser's traceback, after answering it 400, and a client that
    left mid-request likewise. Those are a stranger's doing, not the service's: one info line naming it, so a
    traceback in the log always means a fault of ours. (Handlers' own errors are logged by the error middleware.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while error is not None and not isinstance(error, (HttpProcessingError, ConnectionResetError)):
            error = error.__cause__ or error.__context__  # (a payload error wraps the parser's)
        if error is not None:
            reason = str(error).strip().splitlines()
            record.msg, record.args = "refused a malformed request: %s", (" ".join(reason[:2])[:200],)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


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
