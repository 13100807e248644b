"""The Skytells HTTP client (httpx) and the parsing of what Skytells sends: predictions, errors, callbacks.

Skytells speaks two error shapes, the envelope `{"status": false, "response", "error": {"message",
"error_id", ...}}` and the flat `{"error_id", "message"}`; both become a `SkytellsError` carrying its
message, so the API can pass it on to the user.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
from prometheus_client import Counter, Histogram

from common.errors import StudioError
from common.predictions import Prediction, SkytellsEvent, parse_prediction
from common.signing import tag_reference, untag_reference

SKYTELLS_LATENCY = Histogram(
    "studio_skytells_request_duration_seconds",
    "Latency of calls to Skytells, by operation, whatever their outcome",
    ["operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30),
)
SKYTELLS_FAILURES = Counter(
    "studio_skytells_failures_total",
    "Calls to Skytells that did not give a usable answer, by operation and reason",
    ["operation", "reason"],
)
# Longest error message passed on from Skytells: it ends up in responses and in the database.
MAX_MESSAGE = 1000


# The query parameter of the callback URL that carries Studio's generation id (see `callback_url`).
GENERATION_PARAM = "generation"


def callback_url(public_webhook_url: str, generation_id: uuid.UUID, secret: str) -> str:
    """The callback URL given to Skytells for one generation: `PUBLIC_WEBHOOK_URL` with Studio's generation id,
    tagged under the webhook secret, in its query, so a callback finds its generation even when the prediction id
    was never recorded, and nobody else can point a callback at a generation."""
    parts = urlsplit(public_webhook_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != GENERATION_PARAM]
    query.append((GENERATION_PARAM, tag_reference(str(generation_id), secret)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def generation_of_callback(raw: str | None, secrets: Iterable[str]) -> str | None:
    """The generation id a callback URL carried, in canonical form; None when absent, untagged, wrongly tagged
    or not a UUID."""
    generation_id = untag_reference(raw, secrets) if raw else None
    if generation_id is None:
        return None
    try:
        canonical = uuid.UUID(generation_id)
    except ValueError:
        return None
    return str(canonical) if str(canonical) == generation_id else None


def generation_of_webhook_url(url: str) -> str | None:
    """The generation id in a callback URL Studio gave Skytells, as Skytells lists it back. No tag check: only
    a holder of Studio's API key could have created the prediction it came with."""
    raw = dict(parse_qsl(urlsplit(url).query)).get(GENERATION_PARAM, "")
    try:
        return str(uuid.UUID(raw.rpartition(".")[0]))
    except ValueError:
        return None


class SkytellsError(StudioError):
    """Skytells refused or failed a call. `status` is its HTTP status (0: no answer at all).

    What a failure leaves open decides what a caller may do after a create call:

        SkytellsError          not reached at all (no connection): nothing was made
        ├── SkytellsRefused    a 4xx: Skytells decided, and made nothing
        └── SkytellsUndecided  the request went out but no readable answer came back (a cut connection, a
            │                  5xx from Skytells or a proxy, a 2xx without a prediction): it may have been made
            └── SkytellsTimeout    no answer within the deadline
    """

    def __init__(
        self, message: str, *, status: int = 0, error_id: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_id = error_id
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        """A low-cardinality label for metrics."""
        if self.status == 0:
            return "unreachable"
        if self.status == 429:
            return "rate_limited"
        if 200 <= self.status < 300:
            return "invalid_response"
        return "server_error" if self.status >= 500 else "client_error"


class SkytellsRefused(SkytellsError):
    """Skytells answered with a 4xx: the call did not take effect."""


class SkytellsUndecided(SkytellsError):
    """The request may have taken effect at Skytells; its answer was lost or unreadable."""


class SkytellsTimeout(SkytellsUndecided):
    """Skytells did not answer within the client's deadline."""

    @property
    def reason(self) -> str:
        return "timeout"


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait, from `Retry-After` as delta-seconds or as an HTTP date; None when absent or garbled."""
    raw = response.headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()[:MAX_MESSAGE]
    return None


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser goes
        return None


def error_from_response(response: httpx.Response) -> SkytellsError:
    """Skytells' message from its envelope, its flat `{error_id, message}`, or a bare `error` string; refused for a
    4xx, undecided for anything else."""
    message: str | None = None
    error_id: Any = None
    body = _json_body(response)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            message = _text(err.get("message")) or _text(body.get("response"))
            error_id = err.get("error_id")
        elif _text(body.get("message")):
            message = _text(body.get("message"))
            error_id = body.get("error_id")
        else:
            message = _text(err) or _text(body.get("response"))
    kind = SkytellsRefused if 400 <= response.status_code < 500 else SkytellsUndecided
    return kind(
        message or f"Skytells answered HTTP {response.status_code}",
        status=response.status_code,
        error_id=error_id if isinstance(error_id, str) else None,
        retry_after=_retry_after(response),
    )


class SkytellsClient:
    """One per process; wraps a shared httpx.AsyncClient."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 15.0) -> None:
        # `timeout` bounds the whole call, not only each socket operation, so a server that trickles bytes
        # cannot hold a request (and, in the API, a user's quota slot) for longer.
        self._deadline = timeout
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"x-api-key": api_key, "accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, operation: str, method: str, path: str, body: dict[str, Any] | None = None) -> Prediction:
        started = time.perf_counter()
        try:
            return await self._request(method, path, body)
        except SkytellsError as exc:
            SKYTELLS_FAILURES.labels(operation, exc.reason).inc()
            raise
        finally:
            SKYTELLS_LATENCY.labels(operation).observe(time.perf_counter() - started)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Prediction:
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._http.request(method, path, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # nothing was sent
            raise SkytellsError(f"Skytells could not be reached: {exc.__class__.__name__}") from None
        except (TimeoutError, httpx.TimeoutException):
            raise SkytellsTimeout("Skytells did not answer in time") from None
        except httpx.HTTPError as exc:  # cut while sending or before the answer: it may have arrived
            raise SkytellsUndecided(
                f"Skytells closed the connection without an answer: {exc.__class__.__name__}"
            ) from None
        if response.status_code >= 300 or response.status_code < 200:
            raise error_from_response(response)
        payload = _json_body(response)
        # A 2xx carrying an id is a prediction even when it says `"status": false` (still queued).
        if isinstance(payload, dict) and not isinstance(payload.get("status"), str):
            payload = {**payload, "status": "pending"}
        try:
            return parse_prediction(payload)
        except ValueError:
            raise error_from_response(response) from None

    async def create_prediction(self, model: str, prompt: str, webhook_url: str) -> Prediction:
        return await self._call(
            "create",
            "POST",
            "/predictions",
            {
                "model": model,
                "input": {"prompt": prompt, "width": 1024, "height": 1024},
                "webhook": {"url": webhook_url, "events": [str(event) for event in SkytellsEvent]},
            },
        )

    async def get_prediction(self, prediction_id: str) -> Prediction:
        return await self._call("get", "GET", f"/predictions/{quote(prediction_id, safe='')}")

    async def cancel_prediction(self, prediction_id: str) -> Prediction:
        return await self._call("cancel", "POST", f"/predictions/{quote(prediction_id, safe='')}/cancel")
