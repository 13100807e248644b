"""Raw-socket fuzzing of the API and the gateway: bytes no HTTP client would send, in every header and the request
line; bodies in odd encodings (gzip, deflate, br, bytes outside UTF-8, UTF-16 with its BOM, NULs); truncated,
chunked, pipelined and oversized requests (tests/fuzz_cases.py builds them).

What must hold, whatever arrives: no answer is a 5xx, and neither service logs a traceback. Each run draws a seed
(or takes FUZZ_SEED) and prints it on failure with the case's index, so `FUZZ_SEED=... ` reproduces the run.
`make test` sends a few hundred cases to each service; FUZZ_EXAMPLES=10000 is the long run.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections import Counter

import pytest

from devstack.tokens import issue_token
from tests.fuzz_cases import Case, Target, case
from tests.helpers import JWT_SECRET, WEBHOOK_SECRET, ServiceLog
from tests.wire import WireError, exchange

CASES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("FUZZ_SEED", str(random.randrange(2**32))))
CONCURRENCY = 8


def _targets() -> dict[str, Target]:
    any_id = str(uuid.uuid4()).encode()
    return {
        "api": Target(
            "api",
            (
                (b"POST", b"/api/generate"),
                (b"GET", b"/api/predictions/" + any_id),
                (b"POST", b"/api/predictions/" + any_id + b"/cancel"),
                (b"GET", b"/api/generations?limit=5"),
                (b"GET", b"/api/predictions/" + any_id + b"/events"),  # unknown id: a 404, not a stream
                (b"GET", b"/api/me"),
                (b"OPTIONS", b"/api/generate"),
                (b"GET", b"/api/openapi.json"),
                (b"GET", b"/readyz"),
            ),
            token=issue_token(JWT_SECRET, f"fuzz-{SEED}"),
        ),
        "webhook": Target("webhook", ((b"POST", b"/api/webhooks"), (b"GET", b"/readyz")), secret=WEBHOOK_SECRET),
    }


@pytest.mark.parametrize("service", ["api", "webhook"])
@pytest.mark.timeout(300 + CASES // 5)  # the long run needs more than the suite's default per test
async def test_no_bytes_on_the_wire_cause_a_5xx_or_a_traceback(services, service, request):
    target = _targets()[service]
    port = int(services.env["API_PORT" if service == "api" else "WEBHOOK_PORT"])
    log = ServiceLog(services, service)
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    failures: list[str] = []
    slots = asyncio.Semaphore(CONCURRENCY)

    async def run(index: int) -> None:
        drawn: Case = case(target, SEED, index)
        kinds[drawn.kind] += 1
        async with slots:
            try:
                answers = await exchange(port, drawn.pieces, expect=drawn.expect, half_close=drawn.half_close)
            except (TimeoutError, WireError) as exc:
                failures.append(f"case {index} ({exc.__class__.__name__}: {exc}) {drawn.describe()}")
                return
        statuses.update(str(answer.status) for answer in answers)
        if not answers:
            statuses["closed without an answer"] += 1
        for answer in answers:
            if answer.status >= 500:
                failures.append(f"case {index} answered {answer.status} {answer.body[:200]!r}: {drawn.describe()}")

    await asyncio.gather(*(run(index) for index in range(CASES)))
    await asyncio.sleep(0.5)  # a handler still running after its client left logs within moments
    tracebacks = log.tracebacks()

    figures = f"{service}: {CASES} cases, seed {SEED}; kinds {dict(kinds)}; answers {dict(sorted(statuses.items()))}"
    request.node.user_properties.append(("fuzz", figures))
    print(figures)  # noqa: T201 (the figures a long run reports, shown with -s)
    assert not failures, f"FUZZ_SEED={SEED}: {len(failures)} failures, first: {failures[:5]}"
    assert not tracebacks, f"FUZZ_SEED={SEED}: {len(tracebacks)} tracebacks in {service}.log, first: {tracebacks[:3]}"
    assert sum(statuses.values()) >= CASES  # every case was answered or seen closed: the run measured something
