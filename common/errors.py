"""Domain exceptions. Whoever catches one decides by its branch whether the work is worth retrying.

StudioError
├── TransientError            the same work may succeed later: retry with backoff
│   ├── UpstreamUnavailable   Skytells or its CDN timed out, refused, or answered 5xx
│   ├── BrokerUnavailable     RabbitMQ down, slow to confirm, or it returned the message
│   ├── StorageUnavailable    the S3 server failed or could not be reached
│   └── GenerationNotYetKnown a callback raced the API's write of the prediction id
└── PermanentError            retrying cannot help: end the generation `failed`
    ├── OutputRejected        disallowed host, too large, 4xx from the CDN, not an image
    └── DestinationRefused    a URL's host resolves to an internal address nobody allowed
"""

from __future__ import annotations


class StudioError(Exception):
    """Base of every error Studio raises on purpose."""


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


class PermanentError(StudioError):
    """Retrying cannot change the outcome."""


class OutputRejected(PermanentError):
    pass


class DestinationRefused(PermanentError):
    pass
