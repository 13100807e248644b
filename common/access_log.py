"""What each answered request leaves behind: its access line and its HTTP metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import Counter, Histogram

from common import log as logs

access_logger = logging.getLogger("studio.access")

# The ids a request's handling learned (its request id, and what handlers `annotate`), for its access line.
LOG_IDS: web.RequestKey[Mapping[str, Any]] = web.RequestKey("log_ids")

HTTP_REQUESTS = Counter(
    "studio_http_requests_total", "HTTP requests answered, by route and status", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "studio_http_request_duration_seconds",
    "HTTP request latency, by route",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


_NO_IDS: Mapping[str, Any] = {}


class AccessLog(AbstractAccessLogger):
    """One line per answered request, refused ones included: aiohttp calls it for every response, those to
    requests it could not even parse too (no handler ran for them, so they have no request id). It carries the
    ids the request's handling learned, so a line about one generation names it as every other line does.

    The line is cheap on a hot path: written straight to the log's handler, without a `logging` record, and not
    at all (nor any timing) when the level filters it out, since aiohttp asks `enabled` once per connection."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._write = logs.line_writer(logger.name)  # per connection: aiohttp builds one for each

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        method, path, status = request.method, request.path, response.status
        fields = {
            **request.get(LOG_IDS, _NO_IDS),
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round(time * 1000, 2),
        }
        if self._write is not None:
            self._write(f"{method} {path} {status}", fields)
        else:
            self.logger.info("%s %s %d", method, path, status, extra=fields)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


_SERIES: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe(route: str, method: str, status: int, seconds: float) -> None:
    # `labels()` takes a lock and builds a key on every call: look each series up once, then keep it.
    series = _SERIES.get((route, method, status))
    if series is None:
        series = HTTP_REQUESTS.labels(route, method, str(status)), HTTP_LATENCY.labels(route, method)
        _SERIES[route, method, status] = series
    series[0].inc()
    series[1].observe(seconds)
