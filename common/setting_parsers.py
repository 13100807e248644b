"""What a setting's text may be: each parser turns the raw value of an environment variable into a typed value
or raises ValueError with the sentence that `SettingsError` reports (`common/settings.py` declares which
variable takes which)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit


def text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw


def optional_text(raw: str) -> str:
    return raw.strip()


def integer(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be an integer") from None
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}")
        return value

    return parse


def seconds(low: float, high: float, *, zero: bool = False) -> Callable[[str], float]:
    """A finite number of seconds in [low, high]; `zero` also admits 0 (an age, not a timeout or interval)."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        if value == 0 and not zero:  # a zero timeout or interval would fail every call or spin
            raise ValueError("must be more than zero seconds")
        if not (low <= value <= high or (zero and value == 0)):
            raise ValueError(f"must be from {low:g} to {high:g} seconds")
        return value

    return parse


PORT = integer(1, 65535)
HOUR, DAY = 3600.0, 86400.0


def csv(raw: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not items:
        raise ValueError("must list at least one value")
    return items


def optional_csv(raw: str) -> tuple[str, ...]:
    return csv(raw) if raw.strip() else ()


def url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        try:
            parts = urlsplit(raw)
            host = parts.hostname
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            raise ValueError(f"must be a {'/'.join(schemes)} URL") from None
        if parts.scheme not in schemes or not host:
            raise ValueError(f"must be a {'/'.join(schemes)} URL")
        return raw.rstrip("/") if parts.scheme.startswith("http") else raw

    return parse


def amqp_urls(raw: str) -> str:
    """One RabbitMQ URL, or several nodes of one cluster comma-separated (a process fails over between them)."""
    parse = url("amqp", "amqps")
    return ",".join(parse(node) for node in csv(raw))


# What libpq accepts as target_session_attrs; several hosts are only safe with one that finds the primary.
_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
_WRITABLE_ATTRS = ("read-write", "primary")


def database_hosts(dsn: str) -> list[tuple[str, int]]:
    """The hosts and ports of a PostgreSQL URL, in libpq's multi-host form too (`host1:port1,host2:port2`);
    ValueError when one is malformed."""
    netloc = urlsplit(dsn).netloc.rpartition("@")[2]
    hosts = []
    for item in netloc.split(","):
        parts = urlsplit(f"//{item}")
        if not parts.hostname:
            raise ValueError(f"{item!r} is not a host")
        hosts.append((parts.hostname, parts.port or 5432))
    return hosts


def database_url(raw: str) -> str:
    """A postgresql:// URL; several hosts (libpq's multi-host form) need `target_session_attrs=read-write`."""
    parts = urlsplit(raw)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql URL")
    try:
        hosts = database_hosts(raw)
    except ValueError:
        raise ValueError("must be a postgresql URL (host:port, or several comma-separated)") from None
    attrs = parse_qs(parts.query).get("target_session_attrs", [])
    if any(attr not in _SESSION_ATTRS for attr in attrs):
        raise ValueError(f"target_session_attrs must be one of {', '.join(_SESSION_ATTRS)}")
    if len(hosts) > 1 and not any(attr in _WRITABLE_ATTRS for attr in attrs):
        # Without it a process could settle on a standby and fail every write.
        raise ValueError("several hosts need target_session_attrs=read-write")
    return raw


def optional_url(raw: str) -> str:
    return url("http", "https")(raw) if raw else ""


def origins(raw: str) -> tuple[str, ...]:
    """Exact browser origins: scheme, host and optional port, nothing else."""
    origins = optional_csv(raw)
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or origin != f"{parts.scheme}://{parts.netloc}":
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
    return origins


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def bucket(raw: str) -> str:
    if not _BUCKET.match(raw) or ".." in raw or re.fullmatch(r"[\d.]+", raw):
        raise ValueError("must be a valid S3 bucket name (3-63 lowercase letters, digits, dots and hyphens)")
    return raw


_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def flag(raw: str) -> bool:
    try:
        return _FLAGS[raw.strip().lower()]
    except KeyError:
        raise ValueError("must be 1 or 0 (true/false, yes/no, on/off)") from None


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return level


JWT_SECRET_MIN_BYTES = 32
WEBHOOK_SECRET_MIN_CHARS = 16


def webhook_secrets(raw: str) -> tuple[str, ...]:
    keys = csv(raw)
    if any(len(key) < WEBHOOK_SECRET_MIN_CHARS for key in keys):  # a short HMAC key can be guessed offline
        raise ValueError(f"every key must be at least {WEBHOOK_SECRET_MIN_CHARS} characters")
    return keys


def jwt_secret(raw: str) -> str:
    if len(raw.encode()) < JWT_SECRET_MIN_BYTES:  # HS256 with a short key can be brute-forced offline
        raise ValueError(f"must be at least {JWT_SECRET_MIN_BYTES} bytes")
    return raw
