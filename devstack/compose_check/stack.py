"""What the compose check does to the running stack, as an operator would: through the proxies' ports published
on 127.0.0.1 only, and with compose and the engine for the containers themselves."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import yaml

from devstack.compose_check.engine import environment, inspect, podman, project_containers
from devstack.tokens import issue_token

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "studio-compose-check"
OVERRIDE = Path(__file__).resolve().parent / "s3.override.yml"
API = "http://127.0.0.1:8080"
WEBHOOK = "http://127.0.0.1:8081"
LOOPBACK = {"127.0.0.1", "localhost"}
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")
T = TypeVar("T")
RUNNING = {("running", ""), ("running", "healthy")}
# The key the services sign output URLs with: their own S3 user's, which minio-init makes.
SERVICES_S3_KEY = str(
    yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["environment"]["AWS_ACCESS_KEY_ID"]
)
# Every service docker-compose.yml says scales (its `--scale` line at the top), each to two replicas.
SCALED = {"api": 2, "webhook": 2, "persister": 2, "notifier": 2}


class CheckFailed(Exception):
    """The stack did not do what it should."""


def eventually(what: str, probe: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    """`probe()`'s first answer that is not None, or CheckFailed naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def compose_env() -> dict[str, str]:
    """The environment `make up` and docker-compose run in: the check's own project, the S3 override, podman."""
    return {
        **environment(),
        "COMPOSE_PROJECT_NAME": PROJECT,
        "COMPOSE_FILE": os.pathsep.join(["docker-compose.yml", str(OVERRIDE.relative_to(ROOT))]),
    }


def run(command: Sequence[str], timeout: float = 1800) -> str:
    done = subprocess.run(
        list(command), cwd=ROOT, env=compose_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise CheckFailed(f"{' '.join(command)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return done.stdout + done.stderr


def compose(*args: str, timeout: float = 1800) -> str:
    return run(["docker-compose", *args], timeout=timeout)


def dotenv() -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=(.*)$", (ROOT / ".env").read_text(), re.M))


@dataclass(frozen=True)
class Container:
    id: str
    service: str
    state: str
    health: str  # "" when it has no healthcheck
    exit_code: int
    restarts: int


def containers(*, all_states: bool = True) -> list[Container]:
    found = []
    for row in project_containers(PROJECT, all_states=all_states):
        details = inspect(str(row["Id"]))
        state = details["State"]
        health = state.get("Health") or state.get("Healthcheck") or {}
        found.append(
            Container(
                id=str(details["Id"]),
                service=str(details["Config"]["Labels"].get("com.docker.compose.service", "?")),
                state=str(state.get("Status", "")),
                health=str(health.get("Status", "")) if details["Config"].get("Healthcheck") else "",
                exit_code=int(state.get("ExitCode", 0)),
                restarts=int(details.get("RestartCount", 0)),
            )
        )
    return found


def wait_healthy(timeout: float = 300) -> list[Container]:
    """Every long-running container running and healthy, every one-shot job exited 0; a job that failed ends the
    wait at once."""
    pending: list[Container] = []

    def probe() -> list[Container] | None:
        found = containers()
        for container in found:
            if container.state == "exited" and container.exit_code != 0:
                raise CheckFailed(f"{container.service} exited {container.exit_code}: {logs(container.id)[-3000:]}")
        pending[:] = [c for c in found if c.state != "exited" and (c.state, c.health) not in RUNNING]
        return None if pending or not found else found

    try:
        return eventually("every service healthy", probe, timeout, every=2)
    except CheckFailed as exc:
        late = ", ".join(f"{c.service} {c.id[:12]} {c.state} {c.health}" for c in pending)
        raise CheckFailed(f"{exc}; still: {late}") from None


def waits_for(service: str) -> set[str]:
    """The services docker-compose.yml starts only after `service` (its `depends_on`)."""
    declared = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {name for name, spec in declared.items() if service in spec.get("depends_on", {})}


def _instant(text: str) -> datetime:
    """An engine's RFC 3339 time (nanoseconds, `Z` or an offset) as a datetime, to the microsecond."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00"))


def migrations_gate_the_services() -> str:
    """Every container that waits for `migrate` started after it had finished."""
    jobs = [c for c in containers() if c.service == "migrate"]
    if len(jobs) != 1 or jobs[0].exit_code != 0 or jobs[0].state != "exited":
        raise CheckFailed(f"migrate: {jobs}")
    finished = _instant(inspect(jobs[0].id)["State"]["FinishedAt"])
    waiting = waits_for("migrate")
    gated = [c for c in containers() if c.service in waiting]
    early = [c.service for c in gated if _instant(inspect(c.id)["State"]["StartedAt"]) < finished]
    if early or {c.service for c in gated} != waiting:
        raise CheckFailed(f"started before migrate finished: {early}; running of {sorted(waiting)}: {gated}")
    return f"migrate finished before {len(gated)} {', '.join(sorted(waiting))} containers started"


def diagnosis() -> str:
    """Each container's state, and the last healthcheck output of those not healthy."""
    lines = []
    for container in containers():
        lines.append(f"  {container.service} {container.id[:12]}: {container.state} {container.health}")
        if container.health not in ("", "healthy"):
            state = inspect(container.id)["State"]
            runs = (state.get("Health") or state.get("Healthcheck") or {}).get("Log") or []
            if runs:
                lines.append(f"    last healthcheck: {str(runs[-1].get('Output', '')).strip()[-500:]}")
    return "\n".join(lines)


def logs(container: str) -> str:
    done = podman("logs", container, check=False)
    return done.stdout + done.stderr


def recent_logs(lines: int = 30) -> str:
    """The last lines each Studio container logged (what a failed step needs to be understood)."""
    studio = sorted({*SCALED, *waits_for("migrate"), "migrate", "skytells-sim"})
    try:
        return compose("logs", "--no-color", f"--tail={lines}", *studio, timeout=120)
    except (CheckFailed, subprocess.SubprocessError) as exc:
        return f"no logs: {exc}"


def request(
    method: str, url: str, token: str = "", body: object = None, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    if urlsplit(url).hostname not in LOOPBACK:
        raise CheckFailed(f"{url}: the check addresses the ports published on 127.0.0.1 only")
    sent = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    parts = urlsplit(url)
    if parts.hostname == "localhost":  # 127.0.0.1 only (not ::1), the Host header as given: a presigned URL signs it
        sent["Host"] = parts.netloc
        url = parts._replace(netloc=parts.netloc.replace("localhost", "127.0.0.1", 1)).geturl()
    req = urllib.request.Request(url, data=data, headers=sent, method=method)
    try:
        with urllib.request.urlopen(req, timeout=90) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def token() -> str:
    return issue_token(dotenv()["AUTH_JWT_SECRET"], "compose-check")


def retry_after(status: int, headers: Mapping[str, str]) -> float | None:
    """The seconds a 503 asks a client to wait before trying again (None: not a 503 that asks that)."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    return float(value) if status == 503 and value is not None and value.isdigit() else None


def create(bearer: str, prompt: str, *, wait: bool, tries: int = 6) -> dict[str, Any]:
    """POST /api/generate as a client does: a 503 with Retry-After is tried again after it, a few times, and
    said (the first call to Skytells of a fresh API container can take longer than its connect timeout here)."""
    for attempt in range(1, tries + 1):
        status, headers, body = request(
            "POST", f"{API}/api/generate", bearer, {"prompt": prompt}, {"Prefer": "wait=60"} if wait else None
        )
        delay = retry_after(status, headers)
        if delay is None or attempt == tries:
            break
        logger.info("    POST /api/generate: %s %s; tried again after %.0f s (Retry-After)", status, body[:200], delay)
        time.sleep(delay)
    if status != 201:
        raise CheckFailed(f"POST /api/generate: {status} {body[:500]!r}")
    created: dict[str, Any] = json.loads(body)
    return created


def succeeded(bearer: str, generation_id: str, timeout: float = 120) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status, _, body = request("GET", f"{API}/api/predictions/{generation_id}", bearer)
        if status != 200:
            raise CheckFailed(f"GET /api/predictions/{generation_id}: {status} {body[:500]!r}")
        generation: dict[str, Any] = json.loads(body)
        if generation["status"] in ("failed", "canceled"):
            raise CheckFailed(f"generation {generation_id} ended {generation['status']}: {generation.get('error')}")
        return generation if generation["status"] == "succeeded" else None

    return eventually(f"generation {generation_id} succeeded", probe, timeout)


def presigned_problem(url: str, endpoint: str, access_key: str) -> str:
    """What keeps `url` from being a SigV4-presigned GET for clients at `endpoint` signed with `access_key` ("" when
    nothing does)."""
    parts, base = urlsplit(url), urlsplit(endpoint)
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
        return f"not on S3_PUBLIC_ENDPOINT_URL {endpoint}"
    query = parse_qs(parts.query)
    if query.get("X-Amz-Algorithm") != ["AWS4-HMAC-SHA256"] or not query.get("X-Amz-Signature"):
        return "not a SigV4-presigned URL"
    signer = query.get("X-Amz-Credential", [""])[0].split("/", 1)[0]
    if signer != access_key:
        return f"signed with the key {signer!r}, not the services' {access_key!r}"
    return ""


def public_endpoint() -> str:
    endpoint = dotenv().get("S3_PUBLIC_ENDPOINT_URL", "")
    if not endpoint:
        raise CheckFailed("S3_PUBLIC_ENDPOINT_URL is not in .env (written from an older .env.example?)")
    return endpoint


def fetch_output(generation: Mapping[str, Any]) -> int:
    """The stored image's size, read through its outputUrl: presigned (outputs are private by default) by the
    services' S3 user for S3_PUBLIC_ENDPOINT_URL, the address .env gives clients."""
    url = str(generation["outputUrl"])
    problem = presigned_problem(url, public_endpoint(), SERVICES_S3_KEY)
    if problem:
        raise CheckFailed(f"outputUrl {url}: {problem}")
    status, _, body = request("GET", url)
    if status != 200 or not body.startswith(IMAGE_MAGIC):
        raise CheckFailed(f"outputUrl {url}: {status}, {body[:16]!r}")
    return len(body)


def published_s3_port() -> int:
    """The host port compose published MinIO's S3 API on (`docker-compose port minio 9000`)."""
    found = re.findall(r"^\S*:(\d+)$", compose("port", "minio", "9000"), re.M)
    if not found:
        raise CheckFailed("minio's port 9000 is not published on the host")
    return int(found[-1])


def generate_one() -> str:
    bearer = token()
    generation = create(bearer, "a lighthouse at dusk, compose check", wait=True)
    done = succeeded(bearer, generation["id"])
    endpoint, port = public_endpoint(), published_s3_port()
    if urlsplit(endpoint).port != port:
        raise CheckFailed(
            f"S3_PUBLIC_ENDPOINT_URL {endpoint} in .env is not minio's port published on the host, {port}"
        )
    size = fetch_output(done)
    bare = str(done["outputUrl"]).split("?", 1)[0]
    anonymous = request("GET", bare)[0]
    if anonymous != 403:
        raise CheckFailed(f"{bare} without its signature: {anonymous}, not 403 (outputs are private by default)")
    return (
        f"generation {done['id']} succeeded; its image ({size} bytes) read through its presigned URL "
        f"{done['outputUrl']} (S3_PUBLIC_ENDPOINT_URL {endpoint}, minio's port {port} on the host); "
        f"the same object without the signature refused ({anonymous})"
    )


def scale(counts: Mapping[str, int]) -> str:
    flags = [arg for service, count in counts.items() for arg in ("--scale", f"{service}={count}")]
    compose("up", "-d", "--no-build", *flags)
    healthy = wait_healthy()
    running = {service: sum(c.service == service and c.state == "running" for c in healthy) for service in counts}
    if running != dict(counts):
        raise CheckFailed(f"scaled to {dict(counts)}, running: {running}")
    return ", ".join(f"{service}={count}" for service, count in running.items())


def requests_reach_every_api_replica(count: int = 40) -> str:
    """Concurrent requests with known X-Request-Ids through api-proxy; each replica's log must hold some."""
    bearer = token()
    tag = uuid.uuid4().hex[:12]
    ids = [f"compose-check-{tag}-{n:04d}" for n in range(count)]  # none a prefix of another

    def one(request_id: str) -> int:
        return request("GET", f"{API}/api/generations?limit=1", bearer, headers={"X-Request-Id": request_id})[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, ids))
    if set(statuses) != {200}:
        raise CheckFailed(f"GET /api/generations through the proxy: {sorted(set(statuses))}")
    replicas = [c for c in containers(all_states=False) if c.service == "api"]
    seen = {c.id[:12]: sum(request_id in logs(c.id) for request_id in ids) for c in replicas}
    if len(seen) < 2 or not all(seen.values()):
        raise CheckFailed(f"{count} requests through api-proxy, by replica: {seen}")
    return f"{count} requests through api-proxy, by replica: {seen}"


def killed_persister_restarts_and_loses_nothing(count: int = 4) -> str:
    """Generations created just before and while one persister is down all succeed with their images."""
    bearer = token()
    generations = [create(bearer, f"compose check, before the kill, #{n}", wait=False) for n in range(count)]
    victim = next(c for c in containers(all_states=False) if c.service == "persister")
    pid = inspect(victim.id)["State"]["Pid"]
    os.kill(int(pid), signal.SIGKILL)  # as a crash would: not `stop`, which the restart policy respects
    generations += [create(bearer, f"compose check, after the kill, #{n}", wait=False) for n in range(count)]

    def restarted() -> Container | None:
        now = next((c for c in containers() if c.id == victim.id), None)
        if now is None:
            raise CheckFailed(f"persister {victim.id[:12]} was removed, not restarted")
        return now if now.restarts > victim.restarts and now.state == "running" and now.health == "healthy" else None

    back = eventually(f"persister {victim.id[:12]} restarted", restarted, timeout=120)
    sizes = [fetch_output(succeeded(bearer, generation["id"])) for generation in generations]
    return (
        f"persister {victim.id[:12]} killed (SIGKILL), restarted by its policy (restarts {victim.restarts} -> "
        f"{back.restarts}); all {len(sizes)} generations created just before and after the kill succeeded, "
        "each image read back"
    )


def probes_not_exposed() -> str:
    """/metrics and /readyz answer inside the network only: through either proxy they must not be served."""
    exposed = []
    for base in (API, WEBHOOK):
        for path in ("/metrics", "/readyz"):
            status, _, body = request("GET", f"{base}{path}")
            if status == 200:
                exposed.append(f"{base}{path}")
    if exposed:
        raise CheckFailed(f"served through the proxies: {', '.join(exposed)}")
    return "/metrics and /readyz are not served through api-proxy or webhook-proxy"


def leftovers() -> list[str]:
    """What of the check's project still exists in the engine after `make down`."""
    label = f"label=com.docker.compose.project={PROJECT}"
    found = [f"container {c.id[:12]} ({c.service})" for c in containers()]
    for kind in ("volume", "network"):
        names = podman(kind, "ls", "--quiet", "--filter", label).stdout.split()
        found += [f"{kind} {name}" for name in names]
    return found
