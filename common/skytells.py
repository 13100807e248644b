"""The Skytells HTTP client (httpx) and the parsing of what Skytells sends: predictions, errors, callbacks.

Skytells speaks two error shapes, the envelope `{"status": false, "response", "error": {"message",
"error_id", ...}}` and the flat `{"error_id", "message"}`; both become a `SkytellsError` carrying its
message, so the API can pass it on to the user. Which one is decided here, where the answer is read (the tree
is in `common/errors.py`): callers catch the kind, never look at the status.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from prometheus_client import Counter, Histogram

from common.errors import (
    SkytellsError,
    SkytellsInputRejected,
    SkytellsRateLimited,
    SkytellsRefused,
    SkytellsTimeout,
    SkytellsUndecided,
    SkytellsUnknownPrediction,
    SkytellsUnreachable,
)
from common.predictions import Prediction, SkytellsEvent, parse_prediction
from common.representation import loads

T = TypeVar("T")

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
        return loads(response.content)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser goes
        return None


_KINDS: dict[int, type[SkytellsError]] = {
    400: SkytellsInputRejected,
    422: SkytellsInputRejected,
    429: SkytellsRateLimited,
}


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
    kind = _KINDS.get(response.status_code, SkytellsRefused if 400 <= response.status_code < 500 else SkytellsUndecided)
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
        return await self._measured(operation, self._prediction(method, path, body))

    async def _measured(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except SkytellsError as exc:
            SKYTELLS_FAILURES.labels(operation, exc.reason).inc()
            raise
        finally:
            SKYTELLS_LATENCY.labels(operation).observe(time.perf_counter() - started)

    async def _prediction(self, method: str, path: str, body: dict[str, Any] | None) -> Prediction:
        response = await self._request(method, path, body)
        payload = _json_body(response)
        # A 2xx carrying an id is a prediction even when it says `"status": false` (still queued).
        if isinstance(payload, dict) and not isinstance(payload.get("status"), str):
            payload = {**payload, "status": "pending"}
        try:
            return parse_prediction(payload)
        except ValueError:
            raise error_from_response(response) from None

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None, params: dict[str, str | int] | None = None
    ) -> httpx.Response:
        """Skytells' 2xx answer; a SkytellsError of the kind the failure leaves open otherwise."""
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._http.request(method, path, json=body, params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # nothing was sent
            raise SkytellsUnreachable(f"Skytells could not be reached: {exc.__class__.__name__}") from None
        except (TimeoutError, httpx.TimeoutException):
            raise SkytellsTimeout("Skytells did not answer in time") from None
        except httpx.HTTPError as exc:  # cut while sending or before the answer: it may have arrived
            raise SkytellsUndecided(
                f"Skytells closed the connection without an answer: {exc.__class__.__name__}"
            ) from None
        if response.status_code >= 300 or response.status_code < 200:
            raise error_from_response(response)
        return response

    async def create_prediction(self, model: str, model_input: dict[str, Any], webhook_url: str) -> Prediction:
        """`model_input` is the whole input, `prompt` included, as the model's input schema names it."""
        return await self._call(
            "create",
            "POST",
            "/predictions",
            {
                "model": model,
                "input": model_input,
                "webhook": {"url": webhook_url, "events": [str(event) for event in SkytellsEvent]},
            },
        )

    async def input_schema(self, model: str) -> Any:
        """The model's `input_schema` as Skytells publishes it (whatever it is; None when it has none)."""
        return await self._measured("model", self._input_schema(model))

    async def _input_schema(self, model: str) -> Any:
        response = await self._request("GET", f"/models/{quote(model, safe='')}", None, {"fields": "input_schema"})
        payload = _json_body(response)
        if not isinstance(payload, dict):
            raise SkytellsUndecided("Skytells answered the model without a JSON object")
        return payload.get("input_schema")

    async def get_prediction(self, prediction_id: str) -> Prediction:
        try:
            return await self._call("get", "GET", f"/predictions/{quote(prediction_id, safe='')}")
        except SkytellsUndecided as exc:
            # What Skytells answers for an id it does not know: a 502 carrying an error id.
            if exc.status == 502 and exc.error_id:
                raise SkytellsUnknownPrediction(exc.message, status=exc.status, error_id=exc.error_id) from None
            raise

    async def cancel_prediction(self, prediction_id: str) -> Prediction:
        return await self._call("cancel", "POST", f"/predictions/{quote(prediction_id, safe='')}/cancel")

    async def list_predictions(self, page: int, since: date, until: date) -> Listing:
        """One page (from 1) of the predictions made on the days `since` to `until`, newest first."""
        return await self._measured("list", self._listing(page, since, until))

    async def _listing(self, page: int, since: date, until: date) -> Listing:
        params: dict[str, str | int] = {
            "page": page,
            "per_page": LIST_PAGE_SIZE,
            "from": since.isoformat(),
            "to": until.isoformat(),
        }
        response = await self._request("GET", "/predictions", None, params)
        payload = _json_body(response)
        items = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise SkytellsUndecided("Skytells answered the list of predictions without a `data` list")
        pagination = payload.get("pagination")
        last = pagination.get("last_page") if isinstance(pagination, dict) else None
        listed = []
        for item in items:
            try:
                prediction = parse_prediction(item)
            except ValueError:
                continue  # one unreadable item does not hide the others
            webhook = item.get("webhook")
            url = webhook.get("url") if isinstance(webhook, dict) else None
            listed.append(Listed(prediction, url if isinstance(url, str) else None, _timestamp(item.get("created_at"))))
        return Listing(listed, last if isinstance(last, int) and not isinstance(last, bool) else page)


LIST_PAGE_SIZE = 50  # the most Skytells gives in one page


@dataclass(frozen=True)
class Listed:
    prediction: Prediction
    webhook_url: str | None
    created_at: datetime | None


@dataclass(frozen=True)
class Listing:
    items: list[Listed]
    last_page: int


def _timestamp(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
