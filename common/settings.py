"""The one place that reads the environment (SPEC section 2).

`Settings.from_env` validates every variable at once and raises `SettingsError` naming each bad one, so a
misconfigured process stops at start with a single message instead of failing later on first use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DEFAULT_ALLOWED_MODELS = "truefusion-pro,truefusion-edge,truefusion-2.0"


class SettingsError(Exception):
    """One or more environment variables are missing or malformed."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        listing = "; ".join(f"{name}: {why}" for name, why in sorted(self.problems.items()))
        super().__init__(f"invalid configuration: {listing}")


def _str(raw: str) -> str:
    return raw


def _int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be an integer") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value == 0:
        raise ValueError("must be greater than zero")
    return value


def _port(raw: str) -> int:
    value = _int(raw)
    if not 0 < value < 65536:
        raise ValueError("must be a port number (1-65535)")
    return value


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not value >= 0:  # also rejects NaN
        raise ValueError("must not be negative")
    return value


def _positive_seconds(raw: str) -> float:
    value = _seconds(raw)
    if value == 0:  # a zero timeout or interval would fail every call or spin
        raise ValueError("must be more than zero seconds")
    return value


def _csv(raw: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not items:
        raise ValueError("must list at least one value")
    return items


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"must be a {'/'.join(schemes)} URL")
        return raw.rstrip("/") if parts.scheme.startswith("http") else raw

    return parse


def _optional_url(raw: str) -> str:
    return _url("http", "https")(raw) if raw else ""


@dataclass(frozen=True)
class _Var:
    env: str
    parse: Callable[[str], Any]
    default: str | None  # None: no default, the variable must be set when the service requires it


# field name -> how to read it. Order matters only for S3_PUBLIC_BASE_URL, derived after the others.
_VARS: dict[str, _Var] = {
    "database_url": _Var(
        "DATABASE_URL", _url("postgresql", "postgres"), "postgresql://studio:studio@127.0.0.1:5432/studio"
    ),
    "amqp_url": _Var("AMQP_URL", _url("amqp", "amqps"), "amqp://guest:guest@127.0.0.1:5672/"),
    "s3_endpoint_url": _Var("S3_ENDPOINT_URL", _optional_url, "http://127.0.0.1:9000"),
    "s3_bucket": _Var("S3_BUCKET", _str, "studio-generations"),
    "s3_public_base_url": _Var("S3_PUBLIC_BASE_URL", _optional_url, ""),
    "aws_access_key_id": _Var("AWS_ACCESS_KEY_ID", _str, "minioadmin"),
    "aws_secret_access_key": _Var("AWS_SECRET_ACCESS_KEY", _str, "minioadmin"),
    "aws_region": _Var("AWS_REGION", _str, "us-east-1"),
    "skytells_base_url": _Var("SKYTELLS_BASE_URL", _url("http", "https"), "https://api.skytells.ai/v1"),
    "skytells_api_key": _Var("SKYTELLS_API_KEY", _str, None),
    "skytells_timeout_s": _Var("SKYTELLS_TIMEOUT_S", _positive_seconds, "15"),
    "skytells_webhook_secrets": _Var("SKYTELLS_WEBHOOK_SECRET", _csv, None),
    "public_webhook_url": _Var("PUBLIC_WEBHOOK_URL", _url("http", "https"), "http://127.0.0.1:8081/api/webhooks"),
    "auth_jwt_secret": _Var("AUTH_JWT_SECRET", _str, None),
    "quota_max_active": _Var("QUOTA_MAX_ACTIVE", _positive_int, "10"),
    "allowed_models": _Var("ALLOWED_MODELS", _csv, DEFAULT_ALLOWED_MODELS),
    "output_allowed_hosts": _Var("OUTPUT_ALLOWED_HOSTS", _csv, "*.skytells.ai,*.skytells.cloud"),
    "output_max_bytes": _Var("OUTPUT_MAX_BYTES", _positive_int, "52428800"),
    "reconcile_after_s": _Var("RECONCILE_AFTER_S", _seconds, "120"),
    "reconcile_interval_s": _Var("RECONCILE_INTERVAL_S", _positive_seconds, "15"),
    "api_port": _Var("API_PORT", _port, "8080"),
    "webhook_port": _Var("WEBHOOK_PORT", _port, "8081"),
    "persister_port": _Var("PERSISTER_PORT", _port, "8082"),
    "persister_prefetch": _Var("PERSISTER_PREFETCH", _positive_int, "8"),
    "persister_max_attempts": _Var("PERSISTER_MAX_ATTEMPTS", _positive_int, "10"),
    "retry_base_s": _Var("RETRY_BASE_S", _positive_seconds, "1"),
    "retry_max_s": _Var("RETRY_MAX_S", _positive_seconds, "300"),
    "log_level": _Var("LOG_LEVEL", str.upper, "INFO"),
    # Persister: failed downloads retry within this many seconds of the first attempt (Skytells deletes outputs
    # about 5 minutes after completion); storage and database retries follow RETRY_BASE_S/RETRY_MAX_S alone.
    "download_retry_window_s": _Var("DOWNLOAD_RETRY_WINDOW_S", _seconds, "180"),
    "download_connect_timeout_s": _Var("DOWNLOAD_CONNECT_TIMEOUT_S", _positive_seconds, "5"),
    "download_read_timeout_s": _Var("DOWNLOAD_READ_TIMEOUT_S", _positive_seconds, "20"),
    # The whole download, however the bytes trickle in: a slow CDN cannot hold a message past it.
    "download_deadline_s": _Var("DOWNLOAD_DEADLINE_S", _positive_seconds, "120"),
    # A prediction Skytells still does not know this long after its generation was created ends `failed`.
    "reconcile_unknown_after_s": _Var("RECONCILE_UNKNOWN_AFTER_S", _seconds, "3600"),
}

# What each process cannot run without (SPEC section 2: "required by the API", "required by the gateway").
API_REQUIRED = ("SKYTELLS_API_KEY", "AUTH_JWT_SECRET")
WEBHOOK_REQUIRED = ("SKYTELLS_WEBHOOK_SECRET",)
# SPEC section 2 requires the key of the API only: a persister without it stores what callbacks bring but
# cannot run the reconciler, and says so at start.
PERSISTER_REQUIRED: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    database_url: str
    amqp_url: str
    s3_endpoint_url: str
    s3_bucket: str
    s3_public_base_url: str
    aws_access_key_id: str
    aws_secret_access_key: str
    aws_region: str
    skytells_base_url: str
    skytells_api_key: str
    skytells_timeout_s: float
    skytells_webhook_secrets: tuple[str, ...]
    public_webhook_url: str
    auth_jwt_secret: str
    quota_max_active: int
    allowed_models: tuple[str, ...]
    output_allowed_hosts: tuple[str, ...]
    output_max_bytes: int
    reconcile_after_s: float
    reconcile_interval_s: float
    api_port: int
    webhook_port: int
    persister_port: int
    persister_prefetch: int
    persister_max_attempts: int
    retry_base_s: float
    retry_max_s: float
    log_level: str
    download_retry_window_s: float
    download_connect_timeout_s: float
    download_read_timeout_s: float
    download_deadline_s: float
    reconcile_unknown_after_s: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str], required: Collection[str] = ()) -> Settings:
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for field, var in _VARS.items():
            raw = environ.get(var.env)
            if raw is None or (raw == "" and var.default is None):
                if var.default is None:
                    if var.env in required:
                        problems[var.env] = "is required"
                    values[field] = () if field == "skytells_webhook_secrets" else ""
                    continue
                raw = var.default
            try:
                values[field] = var.parse(raw)
            except ValueError as exc:
                problems[var.env] = str(exc)
        if problems:
            raise SettingsError(problems)
        if not values["s3_public_base_url"]:
            values["s3_public_base_url"] = f"{values['s3_endpoint_url']}/{values['s3_bucket']}"
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def env_names() -> dict[str, str]:
    """Environment variable name -> its default ('' when required or empty), for docs and checks."""
    return {var.env: var.default or "" for var in _VARS.values()}
