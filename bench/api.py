"""The API's two busiest endpoints against their ceilings, measured in the same run on the same servers.

- `POST /api/generate` (authenticated, quota-checked, Skytells called, prediction id recorded) beside its
  ceiling: the same database transaction (per-user lock, expiry, quota-checked insert), the same Skytells call
  and the same update, through the same code with no HTTP in front (`python -m bench.api ceiling ...`).
- `GET /api/predictions/{id}` beside its ceiling: the same SELECT through the same pool, no HTTP.

Both sides run at the same concurrency (the load generator's connections, the ceiling's workers) against one
PostgreSQL and the Skytells simulator, through a pool opened the same way (`open_pool`: `DATABASE_POOL_SIZE`
connections, no reset on release), so both wait for a free connection alike. Goal: each endpoint at 0.5 or more
of its ceiling.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from bench import loadgen
from bench.table import Row, quick, verdict
from common.db import generations
from common.resources import open_pool
from common.settings import Settings
from common.skytells import SkytellsClient, callback_url
from common.web import event_loop
from devstack.processes import ROOT
from devstack.stack import Stack, loopback_env
from devstack.tokens import issue_token

NAME = "api"
SECONDS = 3.0 if quick() else 5.0
CONCURRENCY = 32
USERS = 256
RATIO_GOAL = 0.5
# The simulator answers at once and never completes these: no callback, no image to draw, nothing but the call.
PROMPT = "a lighthouse at dawn #sim:drop #sim:delay=3600"
SECRET = "bench-jwt-secret-of-at-least-32-bytes!"


def _user(n: int) -> str:
    return f"bench-user-{n % USERS:03d}"


# --- the ceilings (run in their own process, on the services' event loop) -------------------------------------


async def _ceiling(kind: str, seconds: float, concurrency: int, ids: list[str]) -> float:
    settings = Settings.from_env(os.environ)
    pool = await open_pool(settings, stateless=True)  # the API's own pool settings
    skytells = SkytellsClient(
        settings.skytells_base_url, settings.skytells_api_key, timeout=settings.skytells_timeout_s
    )
    expiry_s = generations.unsubmitted_expiry_s(settings.skytells_timeout_s)
    counted = 0
    started = time.perf_counter()
    warm_until, stop_at = started + loadgen.WARMUP_SECONDS, started + loadgen.WARMUP_SECONDS + seconds

    async def generate(n: int) -> None:
        user_id = _user(n)
        async with pool.acquire() as conn, conn.transaction():
            await generations.lock_user(conn, user_id)
            await generations.expire_unsubmitted(conn, expiry_s, settings.reconcile_unknown_after_s, user_id)
            created = await generations.insert_within_quota(
                conn, user_id=user_id, model="truefusion-pro", prompt=PROMPT, max_active=settings.quota_max_active
            )
        assert created is not None
        webhook_url = callback_url(settings.public_webhook_url, created.id)
        prediction = await skytells.create_prediction("truefusion-pro", PROMPT, webhook_url)
        async with pool.acquire() as conn:
            await generations.set_prediction(conn, created.id, prediction.id, prediction.studio_status)

    async def get(n: int) -> None:
        async with pool.acquire() as conn:
            found = await generations.get_for_user(conn, uuid.UUID(ids[n % len(ids)]), _user(n))
        assert found is not None

    operation = generate if kind == "generate" else get

    async def worker(n: int) -> None:
        nonlocal counted
        while (now := time.perf_counter()) < stop_at:
            await operation(n)
            if now >= warm_until:
                counted += 1
            n += concurrency

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        await skytells.aclose()
        await pool.close()
    return counted / seconds


def _ceiling_measure(env: dict[str, str], kind: str, ids_file: Path) -> float:
    argv = [sys.executable, "-m", "bench.api", kind, str(SECONDS), str(CONCURRENCY), str(ids_file)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SECONDS + 60, check=True)
    return float(json.loads(done.stdout)["rate"])


# --- the run ---------------------------------------------------------------------------------------------------


async def _seed(database_url: str, count: int) -> list[str]:
    """Finished generations for the GET benchmark, spread over the bench users."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = [(uuid.uuid4(), _user(n), f"pred_seed_{n}") for n in range(count)]
        await conn.executemany(
            "INSERT INTO generations (id, user_id, model, prompt, prediction_id, status, completed_at)"
            " VALUES ($1, $2, 'truefusion-pro', 'seed', $3, 'succeeded', now())",
            rows,
        )
        return [str(gid) for gid, _, _ in rows]
    finally:
        await conn.close()


def _requests(work: Path, ids: list[str]) -> tuple[Path, Path]:
    tokens = [issue_token(SECRET, _user(n)) for n in range(USERS)]
    body = json.dumps({"prompt": PROMPT}).encode()
    posts = [
        loadgen.http_request(
            "POST",
            "/api/generate",
            {"Authorization": f"Bearer {tokens[n % USERS]}", "Content-Type": "application/json"},
            body,
        )
        for n in range(USERS)
    ]
    gets = [
        loadgen.http_request("GET", f"/api/predictions/{gid}", {"Authorization": f"Bearer {tokens[n % USERS]}"})
        for n, gid in enumerate(ids)
    ]
    return loadgen.write_requests(work / "generate.bin", posts), loadgen.write_requests(work / "get.bin", gets)


def run() -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="studio-bench-api-"))
    stack = Stack(loopback_env(AUTH_JWT_SECRET=SECRET, QUOTA_MAX_ACTIVE="100000"), work)
    try:
        stack.start_infrastructure()
        stack.start_simulator()
        stack.start_service("api")
        port = int(stack.env["API_PORT"])
        ids = asyncio.run(_seed(stack.settings.database_url, USERS * 4))
        ids_file = work / "ids.json"
        ids_file.write_text(json.dumps(ids))
        posts, gets = _requests(work, ids)
        results = {
            "generate": (
                _ceiling_measure(stack.env, "generate", ids_file),
                loadgen.measure(port, posts, "closed", SECONDS, connections=CONCURRENCY),
            ),
            "get": (
                _ceiling_measure(stack.env, "get", ids_file),
                loadgen.measure(port, gets, "closed", SECONDS, connections=CONCURRENCY),
            ),
        }
    finally:
        stack.stop()
    return _rows(results)


def _rows(results: dict[str, tuple[float, dict[str, object]]]) -> list[Row]:
    rows = []
    labels = {
        "generate": ("POST /api/generate", "transaction + Skytells call + update", 201),
        "get": ("GET /api/predictions/{id}", "the same SELECT", 200),
    }
    for kind, (ceiling, served) in results.items():
        endpoint, what, expected = labels[kind]
        rate = float(served["rate"])  # type: ignore[arg-type]
        statuses: dict[int, int] = served["statuses"]  # type: ignore[assignment]
        others = sum(v for k, v in statuses.items() if k != expected)
        ratio = rate / ceiling if ceiling else 0.0
        rows += [
            Row(NAME, f"ceiling: {what}, no HTTP ({CONCURRENCY} workers)", f"{ceiling:,.0f}/s"),
            Row(NAME, f"{endpoint} ({CONCURRENCY} conns), p50 {served['p50_ms']:.1f} ms", f"{rate:,.0f}/s"),
            Row(NAME, f"{endpoint} / ceiling", f"{ratio:.2f}", f">= {RATIO_GOAL}", verdict(ratio >= RATIO_GOAL)),
            Row(NAME, f"{endpoint} answers other than {expected}", str(others), "0", verdict(others == 0)),
        ]
    return rows


def main(argv: list[str]) -> int:
    kind, seconds, concurrency, ids_file = argv[0], float(argv[1]), int(argv[2]), Path(argv[3])
    ids = json.loads(ids_file.read_text())
    loop = event_loop(Settings.from_env(os.environ).uvloop)
    try:
        rate = loop.run_until_complete(_ceiling(kind, seconds, concurrency, ids))
    finally:
        loop.close()
    sys.stdout.write(json.dumps({"rate": rate}) + "\n")
    return 0


if __name__ == "__main__":  # a ceiling: python -m bench.api generate|get SECONDS CONCURRENCY IDS_FILE
    sys.exit(main(sys.argv[1:]))
