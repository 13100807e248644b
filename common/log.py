"""JSON-lines logging, configured once per process.

Ids that concern a generation travel in a context variable (`bind`), so every line logged while handling one
carries them without each call site passing them along.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

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
        fields = {key: value for key, value in vars(record).items() if key not in _RESERVED and key[0] != "_"}
        if record.exc_info:
            fields["exc_info"] = self.formatException(record.exc_info)
        return self.line(record.created, record.levelname.lower(), record.name, record.getMessage(), fields)

    def line(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
        """One JSON line: the fixed keys, then the bound ids, then the line's own fields (which win)."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "service": self.service,
            "logger": logger,
            "message": message,
        }
        line.update(_context.get())
        line.update(fields)
        try:
            text = orjson.dumps(line, default=str).decode()
        except TypeError:  # a lone surrogate in some text: the stdlib escapes what orjson refuses
            text = json.dumps(line, default=str)
        # Characters that many line readers (str.splitlines, JavaScript) take as line ends, written as JSON
        # escapes, so a request path or a prompt can never split one log line in two. JSON text holds them only
        # inside strings, where the escape means the same.
        return text.translate(_LINE_BREAKS)


# JSON escapes the other control characters itself; these three it may leave as they are.
_LINE_BREAKS = {code: f"\\u{code:04x}" for code in (0x85, 0x2028, 0x2029)}


class TurnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the lines logged during one turn of the event loop in one write at its end, rather than one
    system call per line (the gateway logs a line per callback, thousands a second). Outside a running loop,
    and for errors, it writes at once: a line that explains a crash is never left waiting."""

    def __init__(self, stream: TextIO, formatter: JsonFormatter) -> None:
        super().__init__(stream)
        self.setFormatter(formatter)
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(text, urgent=record.levelno >= logging.ERROR)

    def write_line(self, text: str, urgent: bool = False) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._pending.append(text)
            if urgent or not self._deferred():
                self.flush()

    def _deferred(self) -> bool:
        """True when a flush at the end of this loop turn will write the pending lines."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False  # another thread, or no loop: write now
        if self._flush_on is loop:
            return True
        if self._flush_on is not None:
            return False  # scheduled on a loop that stopped before running it: write now
        loop.call_soon(self.flush)
        self._flush_on = loop
        return True

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            if self._pending:
                text = "\n".join(self._pending) + "\n"
                self._pending.clear()
                try:
                    self.stream.write(text)
                    self.stream.flush()
                except (OSError, ValueError):  # a closed or broken stdout: as StreamHandler, never raise
                    pass


_handler: TurnHandler | None = None


def line_writer(name: str) -> Callable[[str, dict[str, Any]], None] | None:
    """A writer of info lines for `name` that skips the `logging` machinery (a record, its attributes, the
    filters), for a line logged thousands of times a second; None when `logging` is not configured by
    `configure`, or that logger is not at INFO, has handlers of its own or does not reach the root's. The line
    is the one `logging` would write: same keys, same bound ids, same handler."""
    handler = _handler
    logger = logging.getLogger(name)
    if handler is None or not logger.isEnabledFor(logging.INFO) or logging.getLogger().handlers != [handler]:
        return None
    if logger.filters or any(parent.handlers or not parent.propagate for parent in _ancestors(logger)):
        return None
    formatter = handler.formatter
    assert isinstance(formatter, JsonFormatter)  # set by `configure`, never replaced

    def write(message: str, fields: dict[str, Any]) -> None:
        handler.write_line(formatter.line(time.time(), "info", name, message, fields))

    return write


def _ancestors(logger: logging.Logger) -> Iterator[logging.Logger]:
    current: logging.Logger | None = logger
    while current is not None and current.parent is not None:  # the root's handler is the one checked above
        yield current
        current = current.parent


def configure(service: str, level: str = "INFO") -> None:
    global _handler
    handler = _handler = TurnHandler(sys.stdout, JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Nothing we write uses the thread or process names: skip collecting them on every record (the logging
    # HOWTO's "Optimization" section).
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
