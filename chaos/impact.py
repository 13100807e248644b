"""What each infrastructure fault cost: the longest stretch during which some replica was not ready (its
`/readyz` 503: a request or event meeting it waited that long at most, beside its retry's backoff), and how many
callbacks the gateways answered 503 meanwhile (Skytells retries those, so each is a delay, not a loss).

Measured from outside, as an operator's probes would: every replica's `/readyz` polled from the fault's start
until all answer 200 after it, and the gateways' `studio_webhook_callbacks_total{outcome="broker_unavailable"}`
before and after. A replica restarted meanwhile starts its counter again, so only increases are counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

READY_TIMEOUT_S = 180.0
_REFUSED = "broker_unavailable"


@dataclass(frozen=True)
class Impact:
    kind: str
    unready_s: float  # the longest stretch during which some replica's /readyz was not 200
    gateway_503: int


async def _refused(client: httpx.AsyncClient, ports: Sequence[int]) -> dict[int, float]:
    counts = {}
    for port in ports:
        try:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.HTTPError:
            continue  # a replica restarting: counted from its next answer
        counts[port] = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "studio_webhook_callbacks_total" and sample.labels.get("outcome") == _REFUSED
        )
    return counts


async def _all_ready(client: httpx.AsyncClient, ports: Sequence[int]) -> bool:
    for port in ports:
        try:
            if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
    return True


async def measured(kind: str, fault: Awaitable[None], replicas: Sequence[int], gateways: Sequence[int]) -> Impact:
    """Inflict `fault` (it returns once the part is coming back) and measure what it cost."""
    over = asyncio.Event()
    longest = 0.0

    async def watch(client: httpx.AsyncClient) -> None:
        nonlocal longest
        started, unready_since = time.monotonic(), None
        while True:
            ready = await _all_ready(client, replicas)
            now = time.monotonic()
            if not ready and unready_since is None:
                unready_since = now
            elif ready and unready_since is not None:
                longest, unready_since = max(longest, now - unready_since), None
            if over.is_set() and (ready or now - started > READY_TIMEOUT_S):
                if unready_since is not None:
                    longest = max(longest, now - unready_since)
                return
            await asyncio.sleep(0.2)

    async with httpx.AsyncClient(timeout=5) as client:
        before = await _refused(client, gateways)
        watcher = asyncio.create_task(watch(client))
        try:
            await fault
        finally:
            over.set()
            await watcher
        after = await _refused(client, gateways)
    refused = sum(max(0.0, count - before.get(port, 0.0)) for port, count in after.items())
    return Impact(kind, longest, int(refused))


def render(impacts: Sequence[Impact]) -> str:
    """One line per fault, then the worst of each kind."""
    lines = [f"impact: {i.kind}: not ready for {i.unready_s:.1f} s, {i.gateway_503} callbacks 503" for i in impacts]
    for kind in sorted({i.kind for i in impacts}):
        own = [i for i in impacts if i.kind == kind]
        lines.append(
            f"impact: {kind}: {len(own)} faults, longest not ready {max(i.unready_s for i in own):.1f} s, "
            f"gateway 503s {sum(i.gateway_503 for i in own)} in all, {max(i.gateway_503 for i in own)} at most"
        )
    return "\n".join(lines)
