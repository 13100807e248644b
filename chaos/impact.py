"""What each infrastructure fault cost: how long until every replica was ready again, and how many callbacks the
gateways answered 503 meanwhile (Skytells retries those, so each is a delay, not a loss).

Measured around the fault from outside, as an operator's probes would: every replica's `/readyz`, and the
gateways' `studio_webhook_callbacks_total{outcome="broker_unavailable"}` before the fault and once all are ready.
A replica restarted meanwhile starts its counter again, so only increases are counted.
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
    recovered_s: float  # from the fault's start until every replica answered /readyz 200 again
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
    async with httpx.AsyncClient(timeout=5) as client:
        before = await _refused(client, gateways)
        started = time.monotonic()
        await fault
        while not await _all_ready(client, replicas) and time.monotonic() - started < READY_TIMEOUT_S:
            await asyncio.sleep(0.2)
        recovered_s = time.monotonic() - started
        after = await _refused(client, gateways)
    refused = sum(max(0.0, count - before.get(port, 0.0)) for port, count in after.items())
    return Impact(kind, recovered_s, int(refused))


def render(impacts: Sequence[Impact]) -> str:
    """One line per fault, then the worst of each kind."""
    lines = [
        f"impact: {i.kind}: ready again after {i.recovered_s:.1f} s, {i.gateway_503} callbacks 503" for i in impacts
    ]
    for kind in sorted({i.kind for i in impacts}):
        own = [i for i in impacts if i.kind == kind]
        worst = max(i.recovered_s for i in own)
        lines.append(
            f"impact: {kind}: {len(own)} faults, longest until ready {worst:.1f} s, "
            f"gateway 503s {sum(i.gateway_503 for i in own)} in all, {max(i.gateway_503 for i in own)} at most"
        )
    return "\n".join(lines)
