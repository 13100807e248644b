"""Every error Studio raises on purpose. Whoever catches one decides by its branch: worth retrying or not, and
what the client is told (the error middleware, `common/web.py`, maps each to its HTTP answer, once).

StudioError
├── ApiError                      answered to the client as `{"error": message}` with its status
├── TransientError                the same work may succeed later: retry with backoff, or answer 503
│   ├── UpstreamUnavailable       Skytells' CDN timed out, refused, or answered 5xx
│   ├── BrokerUnavailable         RabbitMQ down, slow to confirm, or it returned the message
│   ├── StorageUnavailable        the S3 server failed or could not be reached
│   ├── GenerationNotYetKnown     a callback raced the API's write of the prediction id
│   └── JwksUnavailable           the identity provider's keys could not be read, and none are cached
├── PermanentError                retrying cannot help: end the generation `failed`
│   ├── OutputRejected            disallowed host, too large, 4xx from the CDN, not an image
│   └── DestinationRefused        a URL's host resolves to an internal address nobody allowed
└── SkytellsError                 a call to Skytells gave no usable answer (`status`: its HTTP status, 0 for none)
    ├── SkytellsTransient         (a TransientError) asking again later may get another answer
    │   ├── SkytellsUnreachable   no connection: nothing was sent, nothing made
    │   ├── SkytellsRateLimited   a 429: nothing made; again after `retry_after`
    │   └── SkytellsUndecided     sent, but no readable answer (a cut connection, a 5xx from Skytells or a proxy,
    │       │                     a 2xx without a prediction): the prediction may have been made
    │       └── SkytellsTimeout   no answer within the client's deadline
    └── SkytellsPermanent         (a PermanentError) Skytells decided; asking again gets the same answer
        ├── SkytellsRefused       any other 4xx: nothing made
        │   └── SkytellsInputRejected   a 400 or 422: Skytells says the input is invalid
        └── SkytellsUnknownPrediction   a lookup of an id Skytells does not know (its 502 with an error id)
"""

from __future__ import annotations

import math
from collections.abc import Mapping


class StudioError(Exception):
    """Base of every error Studio raises on purpose."""


class ApiError(StudioError):
    """An error answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class TransientError(StudioError):
    """The operation may succeed if retried later."""


class UpstreamUnavailable(TransientError):
    pass


class BrokerUnavailable(TransientError):
    pass


class StorageUnavailable(TransientError):
    pass


class GenerationNotYetKnown(TransientError):
    pass


class JwksUnavailable(TransientError):
    """The provider's keys could not be read and none are cached."""


class PermanentError(StudioError):
    """Retrying cannot change the outcome."""


class OutputRejected(PermanentError):
    pass


class DestinationRefused(PermanentError):
    pass


class SkytellsError(StudioError):
    """Skytells refused or failed a call; the subclass says what that leaves open (the tree above)."""

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
        if 200 <= self.status < 300:
            return "invalid_response"
        return "server_error" if self.status >= 500 else "client_error"

    @property
    def retry_after_header(self) -> str:
        """Skytells' `Retry-After`, whole seconds and at least 1, for the client's own."""
        return str(max(1, math.ceil(self.retry_after) if self.retry_after is not None else 1))


class SkytellsTransient(SkytellsError, TransientError):
    pass


class SkytellsUnreachable(SkytellsTransient):
    @property
    def reason(self) -> str:
        return "unreachable"


class SkytellsRateLimited(SkytellsTransient):
    @property
    def reason(self) -> str:
        return "rate_limited"


class SkytellsUndecided(SkytellsTransient):
    pass


class SkytellsTimeout(SkytellsUndecided):
    @property
    def reason(self) -> str:
        return "timeout"


class SkytellsPermanent(SkytellsError, PermanentError):
    pass


class SkytellsRefused(SkytellsPermanent):
    pass


class SkytellsInputRejected(SkytellsRefused):
    pass


class SkytellsUnknownPrediction(SkytellsPermanent):
    pass
