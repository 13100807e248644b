"""One attempt at one delivery: the signed request, sent to the checked address, and what its answer means.

The request is what the Standard Webhooks specification describes: `webhook-id` (the delivery's id, the same on
every attempt), `webhook-timestamp` (this attempt's Unix seconds) and `webhook-signature`, signed by the
`standardwebhooks` package under the user's key, and under the previous key too within the rotation overlap.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import aiohttp
from standardwebhooks import Webhook
from yarl import URL

from common import destinations
from common.addresses import host_allowed
from common.db.deliveries import Delivery, SigningKeys
from common.errors import DestinationRefused, UpstreamUnavailable
from common.presign import OutputLinks
from common.representation import dumps, generation_json

USER_AGENT = "Studio-Webhooks/1"
MAX_ERROR = 500
MAX_BODY_READ = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """What one attempt came to. `delivered`, `gone` (410) and `refused` (a destination it may not reach) are
    final; anything else is worth another attempt, after `retry_after` seconds when the receiver said so."""

    status_code: int | None = None
    error: str | None = None
    delivered: bool = False
    gone: bool = False
    refused: bool = False
    retry_after: float | None = None


@lru_cache(maxsize=4096)
def _signer(key: str) -> Webhook:
    return Webhook(key)


def body_of(delivery: Delivery, links: OutputLinks) -> bytes:
    """`{"type", "timestamp", "data"}`: the generation as of the change, stamped with the change's moment; its
    output URLs made now, so they are valid from the moment of sending."""
    generation = delivery.generation_as_of_change()
    return dumps(
        {
            "type": f"generation.{delivery.event}",
            "timestamp": generation.updated_at.isoformat(),
            "data": generation_json(generation, links),
        }
    )


def signature(keys: SigningKeys, msg_id: str, moment: datetime, body: bytes, overlap_s: float) -> str:
    """`v1,<base64>` under the user's key; within `overlap_s` of a rotation, the old key's signature after it."""
    signatures = [_signer(keys.key).sign(msg_id, moment, body)]
    if keys.previous_key and keys.rotated_at is not None and moment - keys.rotated_at < timedelta(seconds=overlap_s):
        signatures.append(_signer(keys.previous_key).sign(msg_id, moment, body))
    return " ".join(signatures)


def retry_after(value: str | None, now: float, longest: float) -> float | None:
    """Seconds a `Retry-After` asks for (delay or HTTP date), at most `longest`; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), longest)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return min(max(0.0, moment.timestamp() - now), longest)


async def _discard(response: aiohttp.ClientResponse, timeout_s: float) -> None:
    """Read a short body to its end, so the connection is kept for the next delivery; a long, slow or broken one
    is not worth it (its connection is closed instead). The answer's status is what counts, whatever follows."""
    try:
        async with asyncio.timeout(timeout_s):
            seen = 0
            async for chunk in response.content.iter_chunked(MAX_BODY_READ):
                seen += len(chunk)
                if seen > MAX_BODY_READ:
                    response.close()
                    return
    except (TimeoutError, aiohttp.ClientError):
        response.close()
    finally:
        response.release()


class Sender:
    """aiohttp rather than httpx: its pool costs far less per request at the concurrency webhooks run at.

    The request is pinned as the persister's downloads are: the host is resolved and checked here at every
    attempt (`common.destinations.resolve_checked`), and the request goes to that address, the Host header and
    TLS server name (hence certificate verification, and which pooled connection it may reuse) keeping the name."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        links: OutputLinks,
        allow_hosts: Sequence[str],
        timeout_s: float,
        overlap_s: float,
        longest_s: float,
    ) -> None:
        self.http = http
        self.links = links
        self.allow_hosts = tuple(allow_hosts)
        self.timeout_s = timeout_s
        self.overlap_s = overlap_s
        self.longest_s = longest_s

    async def attempt(self, delivery: Delivery, keys: SigningKeys) -> Answer:
        try:
            target = URL(delivery.url)
            host, port = target.raw_host, target.port
        except ValueError as exc:
            return Answer(error=f"webhook URL cannot be parsed: {exc}"[:MAX_ERROR], refused=True)
        if not host or port is None or not target.is_absolute():
            return Answer(error="webhook URL has no host", refused=True)
        listed = host_allowed(host, self.allow_hosts)
        if not (target.scheme == "https" or (target.scheme == "http" and listed)):
            return Answer(error="webhook URL must be https (http only for NOTIFY_ALLOW_HOSTS)", refused=True)
        body = body_of(delivery, self.links)
        moment = datetime.fromtimestamp(math.floor(time.time()), UTC)
        msg_id = str(delivery.id)
        headers = {
            "Host": target.host_port_subcomponent or host,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signature(keys, msg_id, moment, body, self.overlap_s),
        }
        # A host of NOTIFY_ALLOW_HOSTS (by wildcard too) may resolve to internal addresses; any other may not.
        allowed = (host,) if listed else ()
        try:
            async with asyncio.timeout(self.timeout_s):
                address = await destinations.resolve_checked(host, port, allowed)
                response = await self.http.post(
                    target.with_host(str(address)),
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    server_hostname=host if target.scheme == "https" else None,
                )
        except DestinationRefused as exc:
            return Answer(error=str(exc)[:MAX_ERROR], refused=True)
        except UpstreamUnavailable as exc:
            return Answer(error=str(exc)[:MAX_ERROR])
        except TimeoutError:
            return Answer(error=f"no answer within {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:  # refused, reset, TLS: worth another attempt
            return Answer(error=f"{exc.__class__.__name__}: {exc}"[:MAX_ERROR])
        await _discard(response, min(self.timeout_s, 1.0))
        status = response.status
        if 200 <= status < 300:
            return Answer(status, delivered=True)
        if status == 410:
            return Answer(status, "receiver answered 410 Gone", gone=True)
        if 300 <= status < 400:
            return Answer(status, f"redirects are not followed (HTTP {status})")
        wait = None
        if status in (429, 503):
            wait = retry_after(response.headers.get("Retry-After"), time.time(), self.longest_s)
        return Answer(status, f"receiver answered HTTP {status}", retry_after=wait)
