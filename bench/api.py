"""The API's two busiest endpoints against their yardsticks, measured in the same run on the same servers.

- `POST /api/generate` (authenticated, quota-checked, Skytells called, prediction id recorded) beside its
  ceiling: the same database transaction (per-user lock, expiry, quota-checked insert), the same Skytells call
  and the same update, through the same code with no HTTP in front (`python -m bench.api generate ...`; goal:
  0.5).
- `GET /api/predictions/{id}` of succeeded generations (two outputs each) beside its yardstick: a bare aiohttp
  app answering it from the same pool and SELECT, with the same representation and presigned links, but no
  middleware and no token to check (goal: 0.7); what is left between them is the API's own cost. The same
  SELECT with no HTTP at all is shown for scale.
- signed outputs: the same GET from two fresh API processes alike but for `S3_OUTPUT_ACCESS`, `signed` (each
  URL presigned, and reused per key) over `public`: presigning may cost at most a fifth (goal: 0.8). The bare
  app, the API and the pair are measured in turn, twice, so that the machine's drifting load falls on all
  alike.

Both sides run at the same concurrency (the load generator's connections, the ceiling's workers) against one
PostgreSQL and the Skytells simulator, through a pool opened the same way (`open_pool`: `DATABASE_POOL_SIZE`
connections, no reset on release), so both wait for a free connection alike. CPU time per request (the API
process's, the ceiling's, the bare app's) tells the code's cost apart from the shared machine's.
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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from bench import loadgen
from bench.gateway import serving
from bench.proc import cpu_seconds
from bench.table import Row, quick, verdict
from common.db import generations
from common.presign import OutputLinks
from common.process import event_loop
from common.references import callback_url
from common.representation import dumps, generation_json
from common.resources import open_pool
from common.settings import Settings
from common.skytells import SkytellsClient
from devstack.environment import loopback_env
from devstack.processes import ROOT, free_port
from devstack.stack import Stack
from devstack.tokens import issue_token

NAME = "api"
SECONDS = 3.0 if quick() else 5.0
CONCURRENCY = 32
USERS = 256
RATIO_GOAL = 0.5  # POST over its ceiling
GET_GOAL = 0.7  # GET over the bare app
SIGNED_GOAL = 0.8  # signed GET over public GET
OUTPUTS = 2  # per seeded generation: each answer carries that many URLs
# The GETs go round this many generations, so that each has been answered once within the load generator's
# warm-up and the measurement sees what a client polling its generation sees: links presigned once per key and
# reused. What a first answer pays for presigning is its own row.
READ_IDS = USERS
ROUNDS = 2
# The simulator answers at once and never completes these: no callback, no image to draw, nothing but the call.
PROMPT = "a lighthouse at dawn #sim:drop #sim:delay=3600"
SECRET = "bench-jwt-secret-of-at-least-32-bytes!"


def _user(n: int) -> str:
    return f"bench-user-{n % USERS:03d}"


# --- the ceilings (run in their own process, on the services' event loop) -------------------------------------


async def _ceiling(kind: str, seconds: float, concurrency: int, ids: list[str]) -> tuple[float, float]:
    """Operations per second counted after the warm-up, and CPU seconds per operation over the whole loop."""
    settings = Settings.from_env(os.environ)
    pool = await open_pool(settings, stateless=True)  # the API's own pool settings
    skytells = SkytellsClient(
        settings.skytells_base_url, settings.skytells_api_key, timeout=settings.skytells_timeout_s
    )
    expiry_s = settings.reconcile_unknown_after_s
    counted = total = 0
    cpu = time.process_time()
    started = time.perf_counter()
    warm_until, stop_at = started + loadgen.WARMUP_SECONDS, started + loadgen.WARMUP_SECONDS + seconds

    async def generate(n: int) -> None:
        user_id = _user(n)
        async with pool.acquire() as conn, conn.transaction():
            await generations.lock_user(conn, user_id)
            await generations.expire_unsubmitted(conn, expiry_s, user_id=user_id)
            created = await generations.insert_within_quota(
                conn, user_id=user_id, model="truefusion-pro", prompt=PROMPT, max_active=settings.quota_max_active
            )
        assert created is not None
        webhook_url = callback_url(settings.public_webhook_url, created.id, settings.skytells_webhook_secrets[0])
        prediction = await skytells.create_prediction("truefusion-pro", {"prompt": PROMPT}, webhook_url)
        async with pool.acquire() as conn:
            await generations.set_prediction(conn, created.id, prediction.id, prediction.studio_status)

    async def get(n: int) -> None:
        async with pool.acquire() as conn:
            found = await generations.get_for_user(conn, uuid.UUID(ids[n % len(ids)]), _user(n))
        assert found is not None

    operation = generate if kind == "generate" else get

    async def worker(n: int) -> None:
        nonlocal counted, total
        while (now := time.perf_counter()) < stop_at:
            await operation(n)
            total += 1
            if now >= warm_until:
                counted += 1
            n += concurrency

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        cpu = time.process_time() - cpu
    finally:
        await skytells.aclose()
        await pool.close()
    return counted / seconds, cpu / max(1, total)


def _ceiling_measure(env: dict[str, str], kind: str, ids_file: Path) -> tuple[float, float]:
    argv = [sys.executable, "-m", "bench.api", kind, str(SECONDS), str(CONCURRENCY), str(ids_file)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SECONDS + 60, check=True)
    result = json.loads(done.stdout)
    return float(result["rate"]), float(result["cpu_s"])


def _bare_main(port: int, ids_file: Path) -> None:
    """The bare app (`python -m bench.api bare PORT IDS_FILE`): each row's owner is known from the seeding, as a
    remembered token's subject is, so no token is read. Never a service: it answers anyone."""
    settings = Settings.from_env(os.environ)
    owners = {gid: _user(n) for n, gid in enumerate(json.loads(ids_file.read_text()))}
    links = OutputLinks.from_settings(settings)
    pool_key = web.AppKey("pool", asyncpg.Pool)

    async def database(app: web.Application) -> AsyncIterator[None]:
        app[pool_key] = await open_pool(settings, stateless=True)
        yield
        await app[pool_key].close()

    async def get(request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        async with request.app[pool_key].acquire() as conn:
            found = await generations.get_for_user(conn, uuid.UUID(raw), owners[raw])
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(body=dumps(generation_json(found, links)), content_type="application/json", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.cleanup_ctx.append(database)
    app.router.add_get("/api/predictions/{id}", get)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=event_loop(settings.uvloop))


# --- the run ---------------------------------------------------------------------------------------------------


async def _seed(database_url: str, count: int) -> list[str]:
    """Finished generations for the GET benchmark, spread over the bench users."""
    conn = await asyncpg.connect(database_url)
    try:
        ids = [uuid.uuid4() for _ in range(count)]
        keys = [[f"generations/{gid}.png", *(f"generations/{gid}-{k}.png" for k in range(1, OUTPUTS))] for gid in ids]
        rows = [(gid, _user(n), f"pred_seed_{n}", keys[n][0], keys[n]) for n, gid in enumerate(ids)]
        await conn.executemany(
            "INSERT INTO generations (id, user_id, model, prompt, prediction_id, status, completed_at,"
            " output_key, output_keys) VALUES ($1, $2, 'truefusion-pro', 'seed', $3, 'succeeded', now(), $4, $5)",
            rows,
        )
        return [str(gid) for gid in ids]
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
        for n, gid in enumerate(ids[:READ_IDS])
    ]
    return loadgen.write_requests(work / "generate.bin", posts), loadgen.write_requests(work / "get.bin", gets)


def _served(port: int, requests: Path, pid: int) -> dict[str, Any]:
    """The load generator's result, with the serving process's CPU seconds per answer."""
    cpu = cpu_seconds(pid)
    served = loadgen.measure(port, requests, "closed", SECONDS, connections=CONCURRENCY)
    served["cpu_s"] = (cpu_seconds(pid) - cpu) / max(1, served["answered"])
    return served


def run() -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="studio-bench-api-"))
    stack = Stack(
        loopback_env(AUTH_JWT_SECRET=SECRET, QUOTA_MAX_ACTIVE="100000", RATE_LIMIT_CREATES_PER_MINUTE="1000000"), work
    )
    try:
        stack.start_infrastructure()
        stack.start_simulator()
        api = stack.start_service("api")
        port = int(stack.env["API_PORT"])
        ids = asyncio.run(_seed(stack.settings.database_url, USERS * 4))
        ids_file = work / "ids.json"
        ids_file.write_text(json.dumps(ids))
        posts, gets = _requests(work, ids)
        generate = (_ceiling_measure(stack.env, "generate", ids_file), _served(port, posts, api.pid))
        get_ceiling = _ceiling_measure(stack.env, "get", ids_file)
        # The signed/public pair: two fresh API processes alike but for S3_OUTPUT_ACCESS (the first API has
        # served the POSTs, whose state a GET would pay for in the comparison).
        pair = {access: free_port() for access in ("signed", "public")}
        pair_apis = {
            access: stack.start_service("api", {"API_PORT": str(p), "S3_OUTPUT_ACCESS": access}, label=f"api-{access}")
            for access, p in pair.items()
        }
        bare_port = free_port()
        argv = [sys.executable, "-m", "bench.api", "bare", str(bare_port), str(ids_file)]
        with serving("api-bare", argv, stack.env, work, f"http://127.0.0.1:{bare_port}/healthz") as bare_app:
            # The bare app, the API and the pair in turn, a few times: the shared machine's load drifts, and each
            # round sees it alike.
            rounds = []
            for n in range(ROUNDS):
                bare_round, get_round = _served(bare_port, gets, bare_app.pid), _served(port, gets, api.pid)
                # The pair in one order, then the other: neither always follows the same neighbour.
                order = ("signed", "public") if n % 2 == 0 else ("public", "signed")
                served = {access: _served(pair[access], gets, pair_apis[access].pid) for access in order}
                rounds.append((bare_round, get_round, served["signed"], served["public"]))
        bare, get, signed, public = (loadgen.mean([r[n] for r in rounds]) for n in range(4))
        results = {"generate": generate, "get": (get_ceiling, get)}
        presign_s = _presign_seconds(stack.settings)
    finally:
        stack.stop()
    return _rows(results, bare, (signed, public), presign_s)


def _rows(
    results: dict[str, tuple[tuple[float, float], dict[str, Any]]],
    bare: dict[str, Any],
    pair: tuple[dict[str, Any], dict[str, Any]],
    presign_s: float,
) -> list[Row]:
    rows = []
    labels = {
        "generate": ("POST /api/generate", "transaction + Skytells call + update", "operation", 201),
        "get": ("GET /api/predictions/{id}", "the same SELECT", "SELECT", 200),
    }
    for kind, ((ceiling, ceiling_cpu_s), served) in results.items():
        endpoint, what, operation, expected = labels[kind]
        rate = float(served["rate"])
        others = sum(v for k, v in served["statuses"].items() if k != expected)
        cpu_metric, cpu = f"CPU per request (API) / per {operation} (ceiling)", f"{_us(served)} / {_us(ceiling_cpu_s)}"
        rows.append(Row(NAME, f"ceiling: {what}, no HTTP ({CONCURRENCY} workers)", f"{ceiling:,.0f}/s"))
        rows.append(Row(NAME, f"{endpoint} ({CONCURRENCY} conns), p50 {served['p50_ms']:.1f} ms", f"{rate:,.0f}/s"))
        if kind == "generate":
            ratio = rate / ceiling if ceiling else 0.0
            rows.append(
                Row(NAME, f"{endpoint} / ceiling", f"{ratio:.2f}", f">= {RATIO_GOAL}", verdict(ratio >= RATIO_GOAL))
            )
        else:
            metric = f"bare aiohttp + the same pool, SELECT and links, no middleware or token ({CONCURRENCY} conns)"
            rows.append(Row(NAME, metric, f"{bare['rate']:,.0f}/s"))
            ratio = rate / bare["rate"] if bare["rate"] else 0.0
            rows.append(
                Row(NAME, f"{endpoint} / bare aiohttp", f"{ratio:.2f}", f">= {GET_GOAL}", verdict(ratio >= GET_GOAL))
            )
            rows.append(
                Row(NAME, f"{endpoint} / ceiling (no HTTP), for scale", f"{rate / ceiling if ceiling else 0.0:.2f}")
            )
            cpu_metric, cpu = f"{cpu_metric} / per GET (bare)", f"{cpu} / {_us(bare)}"
        rows += [
            Row(NAME, f"{endpoint}: {cpu_metric}", cpu),
            Row(NAME, f"{endpoint} answers other than {expected}", str(others), "0", verdict(others == 0)),
        ]
    signed, public = pair
    ratio = signed["rate"] / public["rate"] if public["rate"] else 0.0
    others = sum(v for r in pair for k, v in r["statuses"].items() if k != 200)
    rows += [
        Row(
            NAME,
            f"GET /api/predictions/{{id}}, {OUTPUTS} outputs, two fresh APIs: S3_OUTPUT_ACCESS=signed / public",
            f"{signed['rate']:,.0f}/s / {public['rate']:,.0f}/s",
        ),
        Row(
            NAME,
            "GET with signed outputs / with public",
            f"{ratio:.2f}",
            f">= {SIGNED_GOAL}",
            verdict(ratio >= SIGNED_GOAL),
        ),
        Row(NAME, "CPU per GET: signed / public", f"{_us(signed)} / {_us(public)}"),
        Row(
            NAME, "presigning one URL not yet reused (botocore), CPU: paid per output by a first answer", _us(presign_s)
        ),
        Row(NAME, "GET (signed, public) answers other than 200", str(others), "0", verdict(others == 0)),
    ]
    return rows


def _presign_seconds(settings: Settings, count: int = 200) -> float:
    """CPU seconds botocore takes to presign one URL for a key it has not signed before."""
    links = OutputLinks.from_settings(settings)
    links.presigner.url("generations/warm-up.png", links.ttl_s)
    cpu = time.process_time()
    for n in range(count):
        links.presigner.url(f"generations/{uuid.uuid4()}-{n}.png", links.ttl_s)
    return (time.process_time() - cpu) / count


def _us(measured: dict[str, Any] | float) -> str:
    seconds = measured["cpu_s"] if isinstance(measured, dict) else measured
    return f"{seconds * 1e6:,.0f} us"


def main(argv: list[str]) -> int:
    if argv[0] == "bare":
        _bare_main(int(argv[1]), Path(argv[2]))
        return 0
    kind, seconds, concurrency, ids_file = argv[0], float(argv[1]), int(argv[2]), Path(argv[3])
    ids = json.loads(ids_file.read_text())
    loop = event_loop(Settings.from_env(os.environ).uvloop)
    try:
        rate, cpu_s = loop.run_until_complete(_ceiling(kind, seconds, concurrency, ids))
    finally:
        loop.close()
    sys.stdout.write(json.dumps({"rate": rate, "cpu_s": cpu_s}) + "\n")
    return 0


if __name__ == "__main__":  # python -m bench.api generate|get SECONDS CONCURRENCY IDS_FILE, or bare PORT IDS_FILE
    sys.exit(main(sys.argv[1:]))
