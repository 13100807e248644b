"""Raw-socket fuzzing of the API, the gateway and the notifier's port: bytes no HTTP client would send, in every
header and the request line; bodies in odd encodings (gzip, deflate, br, bytes outside UTF-8, UTF-16 with its BOM,
NULs); truncated, chunked, pipelined and oversized requests (tests/fuzz_cases.py builds them). The API's routes
include uploads, the deliveries and the webhook key, with ids that exist (the caller's own generation and delivery,
another user's generation) beside ids that do not, and bodies whose `input` names real uploads of the caller and of
someone else.

What must hold, whatever arrives: no answer is a 5xx, and no service logs a traceback. Each run draws a seed
(or takes FUZZ_SEED) and prints it on failure with the case's index, so `FUZZ_SEED=... ` reproduces the run.
`make test` sends a few hundred cases to each service; FUZZ_EXAMPLES=10000 is the long run.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections import Counter

import httpx
import pytest

from devstack.tokens import issue_token
from tests.fuzz_cases import Case, Target, case
from tests.helpers import JWT_SECRET, WEBHOOK_SECRET, ServiceLog, bearer, eventually, wait_for_status
from tests.wire import WireError, exchange

CASES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("FUZZ_SEED", str(random.randrange(2**32))))
CONCURRENCY = 8


PORTS = {"api": "API_PORT", "webhook": "WEBHOOK_PORT", "notifier": "NOTIFIER_PORT"}
# An image's signature is all the API looks at; what follows it is never decoded.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


async def _upload(http: httpx.AsyncClient, api: str, headers: dict[str, str]) -> str:
    response = await http.post(f"{api}/api/uploads", content=PNG, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["ref"])


async def _finished(http: httpx.AsyncClient, api: str, headers: dict[str, str], **fields: object) -> str:
    response = await http.post(f"{api}/api/generate", json={"prompt": "fuzzed around", **fields}, headers=headers)
    assert response.status_code in (200, 201, 202), response.text
    generation_id = str(response.json()["id"])
    await wait_for_status(http, api, generation_id, headers)
    return generation_id


@pytest.fixture(scope="module")
async def targets(services, urls) -> dict[str, Target]:
    """What each service is fuzzed with; the API's ids and references are real ones, made here."""
    token = issue_token(JWT_SECRET, f"fuzz-{SEED}")
    own = {"Authorization": f"Bearer {token}"}
    other = bearer(f"fuzz-other-{uuid.uuid4().hex[:8]}")
    async with httpx.AsyncClient(timeout=30) as http:
        refs = (await _upload(http, urls.api, own), await _upload(http, urls.api, other))
        # Nothing listens at the webhook's address: its delivery exists and fails, as many do.
        kept = await _finished(http, urls.api, own, webhook="http://127.0.0.1:9/fuzz")
        doomed = await _finished(http, urls.api, own)  # for DELETE, which may remove it early in the run
        theirs = await _finished(http, urls.api, other, webhook="http://127.0.0.1:9/fuzz")

        async def delivered() -> list[dict[str, str]]:
            response = await http.get(f"{urls.api}/api/predictions/{kept}/deliveries", headers=own)
            assert response.status_code == 200, response.text
            return list(response.json()["items"])

        delivery = (await eventually("the kept generation's delivery", delivered))[0]["id"]
    any_id = str(uuid.uuid4())
    mine, theirs_path = f"/api/predictions/{kept}", f"/api/predictions/{theirs}"
    api_routes = [
        ("POST", "/api/generate"),
        ("GET", f"/api/predictions/{any_id}"),
        ("GET", mine),
        ("POST", f"/api/predictions/{any_id}/cancel"),
        ("GET", "/api/generations?limit=5"),
        ("GET", f"/api/predictions/{any_id}/events"),  # unknown id: a 404, not a stream
        ("GET", "/api/me"),
        ("OPTIONS", "/api/generate"),
        ("GET", "/api/openapi.json"),
        ("GET", "/readyz"),
        ("POST", "/api/uploads"),
        ("POST", "/api/uploads"),
        ("GET", "/api/models"),
        ("GET", f"{mine}/deliveries"),
        ("GET", f"{theirs_path}/deliveries"),
        ("GET", f"/api/predictions/{any_id}/deliveries"),
        ("POST", f"{mine}/deliveries/{delivery}/redeliver"),
        ("POST", f"{mine}/deliveries/{any_id}/redeliver"),
        ("POST", f"{theirs_path}/deliveries/{delivery}/redeliver"),
        ("GET", "/api/webhooks/secret"),
        ("POST", "/api/webhooks/secret/rotate"),
        ("DELETE", f"/api/predictions/{doomed}"),
        ("DELETE", f"/api/predictions/{any_id}"),
        ("DELETE", theirs_path),
    ]
    notifier_routes = [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/metrics?name[]=x"),
        ("POST", "/metrics"),
        ("GET", "/api/generate"),
        ("DELETE", "/readyz"),
        ("GET", "/nowhere/%2e%2e/metrics"),
    ]

    def routes(pairs: list[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...]:
        return tuple((method.encode(), path.encode()) for method, path in pairs)

    return {
        "api": Target("api", routes(api_routes), token=token, refs=refs),
        "webhook": Target("webhook", ((b"POST", b"/api/webhooks"), (b"GET", b"/readyz")), secret=WEBHOOK_SECRET),
        "notifier": Target("notifier", routes(notifier_routes)),
    }


@pytest.mark.parametrize("service", list(PORTS))
@pytest.mark.timeout(300 + CASES // 5)  # the long run needs more than the suite's default per test
async def test_no_bytes_on_the_wire_cause_a_5xx_or_a_traceback(services, targets, service, request):
    target = targets[service]
    port = int(services.env[PORTS[service]])
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
