"""The Skytells HTTP client (httpx) and the parsing of what Skytells sends: predictions, errors, callbacks.

Skytells speaks two error shapes, the envelope `{"status": false, "response", "error": {"message",
"error_id", ...}}` and the flat `{"error_id", "message"}`; both become a `SkytellsError` carrying its
message, so the API can pass it on to the user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from common.errors import StudioError

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
ACTIVE = ("queued", "processing")

_STATUS_MAP = {
    "pending": "queued",
    "starting": "queued",
    "queued": "queued",
    "started": "processing",
    "processing": "processing",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "canceled",
    "canceled": "canceled",
}


def studio_status(skytells_status: str) -> str:
    """Map a Skytells status to Studio's; an unknown one counts as still running (SPEC section 4)."""
    return _STATUS_MAP.get(skytells_status.lower(), "processing")


@dataclass(frozen=True)
class Prediction:
    id: str
    status: str  # Skytells' own spelling
    output: tuple[str, ...]
    error: str | None
    model: str | None

    @property
    def studio_status(self) -> str:
        return studio_status(self.status)


def _error_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        message = value.get("message") or value.get("detail")
        if isinstance(message, str) and message:
            return message
    return json.dumps(value)


def parse_prediction(payload: Any) -> Prediction:
    """Normalise a prediction: bare or in a `{type, created_at, data}` envelope; output as list, str or null.

    Raises ValueError when there is no usable prediction id and status.
    """
    if isinstance(payload, dict) and isinstance(payload.get("data"), dict) and "type" in payload:
        payload = payload["data"]
    if not isinstance(payload, dict):
        raise ValueError("payload is not a JSON object")
    pid, status = payload.get("id"), payload.get("status")
    if not isinstance(pid, str) or not pid.strip() or len(pid) > 200:
        raise ValueError("payload has no prediction id")
    if not isinstance(status, str) or not status.strip():
        raise ValueError("payload has no prediction status")
    raw_output = payload.get("output")
    if raw_output is None:
        output: tuple[str, ...] = ()
    elif isinstance(raw_output, str):
        output = (raw_output,)
    elif isinstance(raw_output, list) and all(isinstance(item, str) for item in raw_output):
        output = tuple(raw_output)
    else:
        raise ValueError("output must be a URL, a list of URLs, or null")
    model = payload.get("model")
    if isinstance(model, dict):
        model = model.get("name")
    return Prediction(
        id=pid.strip(),
        status=status.strip().lower(),
        output=output,
        error=_error_text(payload.get("error")),
        model=model if isinstance(model, str) else None,
    )


class SkytellsError(StudioError):
    """Skytells refused or failed a call. `status` is its HTTP status (0: no answer at all)."""

    def __init__(
        self, message: str, *, status: int = 0, error_id: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_id = error_id
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date; rare enough that callers fall back to their own backoff


def error_from_response(response: httpx.Response) -> SkytellsError:
    message = f"Skytells answered HTTP {response.status_code}"
    error_id = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            message = err.get("message") or body.get("response") or message
            error_id = err.get("error_id")
        elif isinstance(body.get("message"), str):
            message = body["message"]
            error_id = body.get("error_id")
        elif isinstance(err, str) and err:
            message = err
        elif isinstance(body.get("response"), str):
            message = body["response"]
    return SkytellsError(
        str(message),
        status=response.status_code,
        error_id=error_id if isinstance(error_id, str) else None,
        retry_after=_retry_after(response),
    )


class SkytellsClient:
    """One per process; wraps a shared httpx.AsyncClient."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 15.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"x-api-key": api_key, "accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=5.0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Prediction:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.TimeoutException:
            raise SkytellsError("Skytells did not answer in time") from None
        except httpx.HTTPError as exc:
            raise SkytellsError(f"Skytells could not be reached: {exc.__class__.__name__}") from None
        if response.status_code >= 300:
            raise error_from_response(response)
        try:
            payload = response.json()
            # A 2xx carrying an id is a prediction even when it says `"status": false` (still queued).
            if isinstance(payload, dict) and not isinstance(payload.get("status"), str):
                payload = {**payload, "status": "pending"}
            return parse_prediction(payload)
        except ValueError:
            raise error_from_response(response) from None

    async def create_prediction(self, model: str, prompt: str, webhook_url: str) -> Prediction:
        return await self._call(
            "POST",
            "/predictions",
            {
                "model": model,
                "input": {"prompt": prompt, "width": 1024, "height": 1024},
                "webhook": {"url": webhook_url, "events": ["started", "completed", "failed", "canceled"]},
            },
        )

    async def get_prediction(self, prediction_id: str) -> Prediction:
        return await self._call("GET", f"/predictions/{prediction_id}")

    async def cancel_prediction(self, prediction_id: str) -> Prediction:
        return await self._call("POST", f"/predictions/{prediction_id}/cancel")
