"""The generation reference in a callback URL: Studio's generation id with a tag only Studio can make.

Skytells calls back the URL Studio gave it, and lists it with each prediction. The reference in its query finds
the generation when its prediction id was never recorded (a create call whose answer was lost, an API that died
before writing it). Skytells' signature covers the body only, not the URL, so the tag (an HMAC under the webhook
secret) is what keeps a captured signed body from being replayed against another user's generation.
"""

from __future__ import annotations

import base64
import hmac
import uuid
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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


# Domain separation: a reference tag can never be replayed as a body signature, nor the other way round.
_REFERENCE = b"studio-generation-reference:"


def tag_reference(generation_id: str, secret: str) -> str:
    """`{generation_id}.{tag}`: the reference a callback URL carries. The body's signature does not cover the URL,
    so without the tag a captured signed body could be replayed with another generation's id."""
    mac = hmac.digest(secret.encode(), _REFERENCE + generation_id.encode(), "sha256")[:16]
    return f"{generation_id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def untag_reference(reference: str, secrets: Iterable[str]) -> str | None:
    """The generation id of a reference tagged under any of `secrets` (rotation); None for any other."""
    generation_id, dot, _ = reference.rpartition(".")
    if not dot:
        return None
    matched = False
    for secret in secrets:  # every key, as in `verify`
        matched |= hmac.compare_digest(tag_reference(generation_id, secret), reference)
    return generation_id if matched else None
