"""The one place that reads the environment.

Each setting is declared once, as a field of `Settings`: its variable, parser, default, who reads it and what it
means. `Settings.from_env` validates every variable at once and raises `SettingsError` naming each bad one, so a
misconfigured process stops at start with a single message instead of failing later on first use. The README's
configuration table and the compose file are checked against this declaration by the tests.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from common import setting_parsers as parsers

API, WEBHOOK, PERSISTER, NOTIFIER = "api", "webhook", "persister", "notifier"
ALL = frozenset({API, WEBHOOK, PERSISTER, NOTIFIER})


class SettingsError(Exception):
    """One or more environment variables are missing or malformed."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        listing = "; ".join(f"{name}: {why}" for name, why in sorted(self.problems.items()))
        super().__init__(f"invalid configuration: {listing}")


class OutputAccess(StrEnum):
    """How clients read stored outputs (`S3_OUTPUT_ACCESS`)."""

    SIGNED = "signed"  # private objects, presigned URLs that expire
    PUBLIC = "public"  # anonymous read of `generations/*`, plain URLs (a CDN may sit in front)


def _output_access(raw: str) -> OutputAccess:
    try:
        return OutputAccess(raw.strip().lower())
    except ValueError:
        raise ValueError(f"must be one of {', '.join(OutputAccess)}") from None


@dataclass(frozen=True)
class Var:
    """How one setting is read: its variable, parser, default (None: none; required where `required` says)."""

    env: str
    parse: Callable[[str], Any]
    default: str | None
    readers: frozenset[str]
    doc: str


def _setting(env: str, parse: Callable[[str], Any], default: str | None, readers: Collection[str], doc: str) -> Any:
    return field(metadata={"var": Var(env, parse, default, frozenset(readers), doc)})


@dataclass(frozen=True)
class Settings:
    # fmt: off
    database_url: str = _setting("DATABASE_URL", parsers.database_url, "postgresql://studio:studio@127.0.0.1:5432/studio", {API, PERSISTER, NOTIFIER}, "PostgreSQL DSN; several hosts (a primary and its standbys) in libpq's form `postgresql://u:p@h1:5432,h2:5432/db?target_session_attrs=read-write`")  # noqa: E501
    database_pool_size: int = _setting("DATABASE_POOL_SIZE", parsers.integer(1, 1000), "20", {API, PERSISTER, NOTIFIER}, "most PostgreSQL connections one process opens")  # noqa: E501
    amqp_url: str = _setting("AMQP_URL", parsers.amqp_urls, "amqp://guest:guest@127.0.0.1:5672/", {API, WEBHOOK, PERSISTER}, "RabbitMQ URL; the nodes of a cluster comma-separated (each process connects to one that answers)")  # noqa: E501
    amqp_quorum_size: int = _setting("AMQP_QUORUM_SIZE", parsers.integer(1, 99), "3", {API, WEBHOOK, PERSISTER}, "initial group size of quorum queues (RabbitMQ caps it at the cluster's size)")  # noqa: E501
    s3_endpoint_url: str = _setting("S3_ENDPOINT_URL", parsers.optional_url, "http://127.0.0.1:9000", {API, PERSISTER, NOTIFIER}, "S3 endpoint; empty means AWS")  # noqa: E501
    s3_bucket: str = _setting("S3_BUCKET", parsers.bucket, "studio-generations", {API, PERSISTER, NOTIFIER}, "bucket for outputs")  # noqa: E501
    s3_public_base_url: str = _setting("S3_PUBLIC_BASE_URL", parsers.optional_url, "", {API, PERSISTER, NOTIFIER}, "prefix of the public URL of a stored object; default `{S3_ENDPOINT_URL}/{S3_BUCKET}`, on AWS `https://{S3_BUCKET}.s3.{AWS_REGION}.amazonaws.com`")  # noqa: E501
    s3_output_access: OutputAccess = _setting("S3_OUTPUT_ACCESS", _output_access, "signed", {API, NOTIFIER}, "`signed`: outputs private, every URL given out presigned for `OUTPUT_URL_TTL_S`; `public`: `S3_PUBLIC_BASE_URL/key` and a bucket policy that lets anyone read `generations/*`")  # noqa: E501
    s3_public_endpoint_url: str = _setting("S3_PUBLIC_ENDPOINT_URL", parsers.optional_url, "", {API, NOTIFIER}, "the S3 address clients reach, used to presign (in compose the services reach MinIO by another name); default `S3_ENDPOINT_URL`")  # noqa: E501
    output_url_ttl_s: int = _setting("OUTPUT_URL_TTL_S", parsers.integer(60, 604_800), "3600", {API, NOTIFIER}, "lifetime in seconds of a presigned output URL, 60 to 604800")  # noqa: E501
    aws_access_key_id: str = _setting("AWS_ACCESS_KEY_ID", parsers.text, "minioadmin", {API, PERSISTER, NOTIFIER}, "S3 credentials")  # noqa: E501
    aws_secret_access_key: str = _setting("AWS_SECRET_ACCESS_KEY", parsers.text, "minioadmin", {API, PERSISTER, NOTIFIER}, "S3 credentials")  # noqa: E501
    aws_region: str = _setting("AWS_REGION", parsers.text, "us-east-1", {API, PERSISTER, NOTIFIER}, "S3 region")
    skytells_base_url: str = _setting("SKYTELLS_BASE_URL", parsers.url("http", "https"), "https://api.skytells.ai/v1", {API, PERSISTER}, "Skytells API base")  # noqa: E501
    skytells_api_key: str = _setting("SKYTELLS_API_KEY", parsers.text, None, {API, PERSISTER}, "sent as `x-api-key`; without it the persister's reconciler is off")  # noqa: E501
    skytells_timeout_s: float = _setting("SKYTELLS_TIMEOUT_S", parsers.seconds(0.1, 300), "15", {API, PERSISTER}, "deadline of one call to Skytells")  # noqa: E501
    skytells_webhook_secrets: tuple[str, ...] = _setting("SKYTELLS_WEBHOOK_SECRET", parsers.webhook_secrets, None, {API, WEBHOOK}, "HMAC key(s) of callbacks, comma-separated (rotation, the first tags callback URLs), each at least 16 characters")  # noqa: E501
    public_webhook_url: str = _setting("PUBLIC_WEBHOOK_URL", parsers.url("http", "https"), "http://127.0.0.1:8081/api/webhooks", {API}, "callback URL given to Skytells")  # noqa: E501
    auth_jwt_secret: str = _setting("AUTH_JWT_SECRET", parsers.jwt_secret, None, {API}, "HS256 key for API bearer tokens, at least 32 bytes; required unless `AUTH_JWKS_URL` is set")  # noqa: E501
    auth_jwks_url: str = _setting("AUTH_JWKS_URL", parsers.optional_url, "", {API}, "JWKS of an identity provider: RS256 and ES256 tokens signed by its keys are accepted too")  # noqa: E501
    auth_jwks_refresh_s: float = _setting("AUTH_JWKS_REFRESH_S", parsers.seconds(1, parsers.DAY), "600", {API}, "longest time between two reads of `AUTH_JWKS_URL` (a shorter `Cache-Control: max-age` wins): a key the provider withdrew stops working by then")  # noqa: E501
    auth_jwt_audience: str = _setting("AUTH_JWT_AUDIENCE", parsers.optional_text, "", {API}, "when set, tokens must carry this `aud`")  # noqa: E501
    auth_jwt_issuer: str = _setting("AUTH_JWT_ISSUER", parsers.optional_text, "", {API}, "when set, tokens must carry this `iss`")  # noqa: E501
    cors_allowed_origins: tuple[str, ...] = _setting("CORS_ALLOWED_ORIGINS", parsers.origins, "", {API}, "browser origins allowed to call the API (comma-separated, exact origins)")  # noqa: E501
    quota_max_active: int = _setting("QUOTA_MAX_ACTIVE", parsers.integer(1, 100_000), "10", {API}, "active (queued + processing) generations allowed per user")  # noqa: E501
    rate_limit_creates_per_minute: int = _setting("RATE_LIMIT_CREATES_PER_MINUTE", parsers.integer(1, 1_000_000), "600", {API}, "`POST /api/generate` calls allowed per user per minute, across all replicas")  # noqa: E501
    streams_per_user: int = _setting("STREAMS_PER_USER", parsers.integer(1, 10_000), "20", {API}, "open event streams allowed per user, on one API replica")  # noqa: E501
    models_cache_s: float = _setting("MODELS_CACHE_S", parsers.seconds(0, parsers.DAY, zero=True), "300", {API}, "how long a model's input schema read from Skytells is kept (while Skytells cannot be read, the last one read is used)")  # noqa: E501
    upload_max_bytes: int = _setting("UPLOAD_MAX_BYTES", parsers.integer(1, 1024**3), "10485760", {API}, "largest reference image accepted by `POST /api/uploads`")  # noqa: E501
    allowed_models: tuple[str, ...] = _setting("ALLOWED_MODELS", parsers.csv, "truefusion-pro,truefusion-edge,truefusion-2.0", {API}, "models a request may name, comma-separated; the first is the default")  # noqa: E501
    output_allowed_hosts: tuple[str, ...] = _setting("OUTPUT_ALLOWED_HOSTS", parsers.csv, "*.skytells.ai,*.skytells.cloud", {PERSISTER}, "hosts the persister may download outputs from (`*.x.com` allowed)")  # noqa: E501
    output_max_bytes: int = _setting("OUTPUT_MAX_BYTES", parsers.integer(1, 5 * 1024**3), "52428800", {PERSISTER}, "largest output accepted")  # noqa: E501
    reconcile_after_s: float = _setting("RECONCILE_AFTER_S", parsers.seconds(0, 7 * parsers.DAY, zero=True), "120", {PERSISTER}, "age after which an unfinished generation is checked at Skytells")  # noqa: E501
    reconcile_interval_s: float = _setting("RECONCILE_INTERVAL_S", parsers.seconds(0.1, parsers.DAY), "15", {PERSISTER}, "pause between two reconciler passes")  # noqa: E501
    reconcile_unknown_after_s: float = _setting("RECONCILE_UNKNOWN_AFTER_S", parsers.seconds(0, 7 * parsers.DAY, zero=True), "600", {API, PERSISTER}, "how long a generation with no recorded prediction id waits to be found at Skytells before it ends `failed`")  # noqa: E501
    bind_host: str = _setting("BIND_HOST", parsers.text, "0.0.0.0", ALL, "address the services listen on (the local stack uses 127.0.0.1)")  # noqa: E501
    api_port: int = _setting("API_PORT", parsers.PORT, "8080", {API}, "API port")
    webhook_port: int = _setting("WEBHOOK_PORT", parsers.PORT, "8081", {WEBHOOK}, "webhook gateway port")
    persister_port: int = _setting("PERSISTER_PORT", parsers.PORT, "8082", {PERSISTER}, "persister port (health and metrics)")  # noqa: E501
    notifier_port: int = _setting("NOTIFIER_PORT", parsers.PORT, "8083", {NOTIFIER}, "notifier port (health and metrics)")  # noqa: E501
    notify_allow_hosts: tuple[str, ...] = _setting("NOTIFY_ALLOW_HOSTS", parsers.optional_csv, "", {API, NOTIFIER}, "webhook destinations (comma-separated hosts, `*.x.com` allowed) that may use `http://` and resolve to loopback or private addresses; every other destination must be `https://` and public")  # noqa: E501
    notify_timeout_s: float = _setting("NOTIFY_TIMEOUT_S", parsers.seconds(0.1, 300), "15", {NOTIFIER}, "deadline of one webhook delivery attempt")  # noqa: E501
    notify_max_age_s: float = _setting("NOTIFY_MAX_AGE_S", parsers.seconds(1, 30 * parsers.DAY), "86400", {NOTIFIER}, "how long a webhook delivery is retried after its change before it ends `failed`")  # noqa: E501
    notify_rotation_overlap_s: float = _setting("NOTIFY_ROTATION_OVERLAP_S", parsers.seconds(0, 30 * parsers.DAY, zero=True), "86400", {NOTIFIER}, "after a webhook secret rotation, how long deliveries are signed with the old key too")  # noqa: E501
    notify_retry_base_s: float = _setting("NOTIFY_RETRY_BASE_S", parsers.seconds(0.01, parsers.HOUR), "5", {NOTIFIER}, "first webhook retry delay, at most (full jitter); it doubles each attempt")  # noqa: E501
    notify_retry_max_s: float = _setting("NOTIFY_RETRY_MAX_S", parsers.seconds(0.01, parsers.HOUR), "3600", {NOTIFIER}, "longest pause between two attempts at a webhook delivery (a `Retry-After` included)")  # noqa: E501
    notify_lease_s: float = _setting("NOTIFY_LEASE_S", parsers.seconds(1, 600), "30", {NOTIFIER}, "how long a notifier holds a delivery without renewing its claim: a replica that died lets go of its deliveries after this")  # noqa: E501
    persister_prefetch: int = _setting("PERSISTER_PREFETCH", parsers.integer(1, 1000), "8", {PERSISTER}, "events one persister handles at once")  # noqa: E501
    persister_max_attempts: int = _setting("PERSISTER_MAX_ATTEMPTS", parsers.integer(1, 100), "10", {WEBHOOK, PERSISTER}, "attempts at an event before it is dead-lettered")  # noqa: E501
    retry_base_s: float = _setting("RETRY_BASE_S", parsers.seconds(0.01, parsers.HOUR), "1", {WEBHOOK, PERSISTER}, "first retry delay; it doubles each attempt")  # noqa: E501
    retry_max_s: float = _setting("RETRY_MAX_S", parsers.seconds(0.01, parsers.DAY), "300", {WEBHOOK, PERSISTER}, "longest retry delay")  # noqa: E501
    download_retry_window_s: float = _setting("DOWNLOAD_RETRY_WINDOW_S", parsers.seconds(0, parsers.HOUR, zero=True), "180", {PERSISTER}, "failed downloads retry within this many seconds of the first attempt (Skytells deletes outputs minutes after completion)")  # noqa: E501
    download_connect_timeout_s: float = _setting("DOWNLOAD_CONNECT_TIMEOUT_S", parsers.seconds(0.1, 300), "5", {PERSISTER}, "connect timeout of an output download")  # noqa: E501
    download_read_timeout_s: float = _setting("DOWNLOAD_READ_TIMEOUT_S", parsers.seconds(0.1, 600), "20", {PERSISTER}, "read timeout of an output download")  # noqa: E501
    spool_dir: str = _setting("SPOOL_DIR", parsers.optional_text, "", {PERSISTER}, "folder of the local spool for outputs that could not be put while storage was down; unset: `studio-spool` under the system's temporary directory")  # noqa: E501
    spool_max_bytes: int = _setting("SPOOL_MAX_BYTES", parsers.integer(1, 2**50), "2147483648", {PERSISTER}, "most the local spool holds; when full, the persister takes no new events until storage drains it")  # noqa: E501
    download_deadline_s: float = _setting("DOWNLOAD_DEADLINE_S", parsers.seconds(1, 3600), "120", {PERSISTER}, "longest an output's whole download may take, however the bytes trickle in (then it is retried)")  # noqa: E501
    log_level: str = _setting("LOG_LEVEL", parsers.log_level, "INFO", ALL, "DEBUG, INFO, WARNING, ERROR or CRITICAL")
    uvloop: bool = _setting("UVLOOP", parsers.flag, "1", ALL, "run on uvloop when it is installed (faster); 0 for asyncio's own loop")  # noqa: E501
    # fmt: on

    @classmethod
    def from_env(cls, environ: Mapping[str, str], required: Collection[str] = ()) -> Settings:
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name, var in declared().items():
            raw = environ.get(var.env)
            if raw is None or (raw == "" and var.default is None):
                if var.default is None:
                    if var.env in required and not _waived(var.env, environ):
                        problems[var.env] = "is required"
                    values[name] = () if name == "skytells_webhook_secrets" else ""
                    continue
                raw = var.default
            try:
                values[name] = var.parse(raw)
            except ValueError as exc:
                problems[var.env] = str(exc)
        if problems:
            raise SettingsError(problems)
        if not values["s3_public_base_url"]:
            values["s3_public_base_url"] = (
                f"{values['s3_endpoint_url']}/{values['s3_bucket']}"
                if values["s3_endpoint_url"]
                else f"https://{values['s3_bucket']}.s3.{values['aws_region']}.amazonaws.com"
            )
        if not values["s3_public_endpoint_url"]:
            values["s3_public_endpoint_url"] = values["s3_endpoint_url"]
        if not values["spool_dir"]:
            values["spool_dir"] = os.path.join(tempfile.gettempdir(), "studio-spool")
        return cls(**values)


def _waived(env: str, environ: Mapping[str, str]) -> bool:
    """A requirement another setting stands in for: tokens verified by a JWKS need no shared secret."""
    return env == "AUTH_JWT_SECRET" and bool(environ.get("AUTH_JWKS_URL"))


def declared() -> dict[str, Var]:
    """Field name -> its declaration, in declaration order."""
    return {f.name: f.metadata["var"] for f in fields(Settings)}


def env_names() -> dict[str, str]:
    """Environment variable name -> its default ('' when required or empty), for docs and checks."""
    return {var.env: var.default or "" for var in declared().values()}


# What each process cannot run without. The persister runs without the Skytells key: it stores what callbacks
# bring but cannot reconcile, and says so at start.
API_REQUIRED = ("SKYTELLS_API_KEY", "AUTH_JWT_SECRET", "SKYTELLS_WEBHOOK_SECRET")
WEBHOOK_REQUIRED = ("SKYTELLS_WEBHOOK_SECRET",)
PERSISTER_REQUIRED: tuple[str, ...] = ()
NOTIFIER_REQUIRED: tuple[str, ...] = ()
