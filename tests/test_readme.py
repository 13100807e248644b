"""README.md cannot drift from the code: its configuration table is the settings module's, its walk-through
runs as printed, its diagram and failure notes name the real parts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

from common.settings import API_REQUIRED, PERSISTER_REQUIRED, WEBHOOK_REQUIRED, env_names
from common.topology import DEAD_QUEUE, EXCHANGE, QUEUE
from devstack.tokens import issue_token
from services.api.bodies import MAX_BODY as API_MAX_BODY
from services.api.bodies import MAX_IDEMPOTENCY_KEY, MAX_PROMPT
from services.api.paging import MAX_LIMIT
from services.webhook.views import MAX_BODY as WEBHOOK_MAX_BODY
from tests.helpers import JWT_SECRET, eventually, wait_for_status
from tests.test_compose_config import SECRETS, WIRED

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _config_rows() -> dict[str, str]:
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| .* \| (.+) \|$", _section("Configuration"), re.M)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "a variable appears twice"
    return dict(rows)


def test_configuration_table_lists_exactly_the_settings_variables():
    assert set(_config_rows()) == set(env_names())


def test_configuration_defaults_are_the_settings_defaults():
    rows = _config_rows()
    required_by = {
        name: [
            who
            for who, names in (("API", API_REQUIRED), ("gateway", WEBHOOK_REQUIRED), ("persister", PERSISTER_REQUIRED))
            if name in names
        ]
        for name in env_names()
    }
    for name, default in env_names().items():
        cell = rows[name]
        if default:
            assert cell == f"`{default}`", f"{name}: README says {cell}, settings say {default!r}"
        elif required_by[name]:
            assert cell.startswith("required by"), name
            assert all(who in cell for who in required_by[name]), f"{name} is required by {required_by[name]}"
        elif name == "S3_PUBLIC_BASE_URL":
            assert cell == "`{S3_ENDPOINT_URL}/{S3_BUCKET}`"
        elif name == "S3_PUBLIC_ENDPOINT_URL":
            assert cell == "`S3_ENDPOINT_URL`"
        else:
            assert cell in ("unset", "none"), f"{name} is optional and empty by default: README says {cell}"


def test_diagram_shows_every_part_and_the_real_queue_names():
    diagram = README.split("```mermaid\n", 1)[1].split("```", 1)[0]
    for part in ("api", "webhook", "persister", "notifier", "PostgreSQL", "RabbitMQ", "S3", "Skytells", "reconciler"):
        assert part in diagram, part
    assert EXCHANGE in diagram and f"queue {QUEUE}" in diagram


def test_failure_section_covers_each_failure_and_the_dead_letter_queue():
    failures = _section("What happens when things fail")
    for topic in ("RabbitMQ down", "callback never arrives", "Duplicate", "expired", "Storage down", "Database down"):
        assert topic in failures, topic
    assert f"`{DEAD_QUEUE}`" in failures
    assert "python -m services.persister redrive" in failures
    assert "503" in failures and "Retry-After" in failures


def test_the_two_commands_and_compose_commands_are_there():
    assert "make run" in _section("Two commands") and "make test" in _section("Two commands")
    compose = _section("Running with Docker Compose")
    assert "make up" in compose and "make down" in compose
    assert "docker compose up -d --scale api=2 --scale webhook=2 --scale persister=4 --scale notifier=2" in compose
    # The variables compose fixes, as the compose test knows them.
    for name in WIRED - {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "API_PORT",
        "WEBHOOK_PORT",
        "PERSISTER_PORT",
        "NOTIFIER_PORT",
    }:
        assert f"`{name}`" in compose, name
    for secret in SECRETS:
        assert f"`{secret}`" in compose, secret


def test_the_limits_table_says_what_the_code_enforces():
    limits = dict(
        re.findall(r"^\| (.+?) \| (.+?) \| .+ \|$", _section("Calling the API").split("### Limits", 1)[1], re.M)
    )
    assert limits["`prompt`"] == f"1 to {MAX_PROMPT} characters once trimmed"
    assert limits["request body of the API"] == f"{API_MAX_BODY // 1024} KiB"
    assert limits["callback body at the gateway"] == f"{WEBHOOK_MAX_BODY // (1024 * 1024)} MiB"
    assert limits["`Idempotency-Key`"] == f"1 to {MAX_IDEMPOTENCY_KEY} printable characters"
    assert limits["`limit` of `GET /api/generations`"] == f"1 to {MAX_LIMIT}"
    calling = _section("Calling the API")
    assert "403 when the body's `userId` is not the token's user" in calling
    tokens = calling.split("### Tokens", 1)[1]
    for name in ("AUTH_JWT_SECRET", "AUTH_JWKS_URL", "AUTH_JWT_AUDIENCE", "AUTH_JWT_ISSUER"):
        assert f"`{name}`" in tokens and name in env_names(), name


def test_the_lock_and_how_to_upgrade_it_are_explained():
    development = _section("Development")
    for text in ("make lock", "requirements-dev.lock", "requirements.lock", "ARGS=--upgrade", '-P aiohttp"'):
        assert text in development, text


async def test_the_log_recipes_find_a_request_and_a_generation_in_every_service(services, urls, http, auth):
    """The Logs section's shell lines, run by bash over the test stack's logs, find what they promise."""
    request_id = f"readme-{uuid.uuid4().hex}"
    created = await http.post(
        f"{urls.api}/api/generate", json={"prompt": "a map of the logs"}, headers={**auth, "X-Request-Id": request_id}
    )
    assert created.status_code == 201, created.text
    generation_id = created.json()["id"]
    assert (await wait_for_status(http, urls.api, generation_id, auth))["status"] == "succeeded"
    logs = _section("Logs")
    by_request, by_generation = (block.split("```", 1)[0] for block in logs.split("```sh\n")[1:3])
    env = {**os.environ, "LOGS": str(services.work_dir / "logs")}

    def run(script: str) -> list[dict]:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    found = run(by_request.replace("<X-Request-Id>", request_id))
    access = [line for line in found if line["logger"] == "studio.access"]
    assert [(line["method"], line["path"], line["status"]) for line in access] == [("POST", "/api/generate", 201)]

    # The gateway's and the persister's lines may trail the status change by a moment.
    script = by_generation.replace("<the id of the API's answer>", generation_id)
    await eventually(
        "lines of the api, the gateway and the persister",
        lambda: {"api", "webhook", "persister"} <= {line["service"] for line in run(script)},
        timeout=10,
    )


def test_the_curl_walk_through_works_as_printed(services, urls, tmp_path, user_id):
    """The README's shell block, run by bash with real curl against the test stack (its ports instead of the
    defaults `make run` uses), leaves a succeeded generation and the stored PNG behind."""
    walk = _section("Calling the API").split("```sh\n", 1)[1].split("```", 1)[0]
    assert walk.count("curl ") == 3
    script = walk.replace("http://127.0.0.1:8080", urls.api)
    env = {**os.environ, "TOKEN": issue_token(JWT_SECRET, user_id)}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    created = json.loads((tmp_path / "created.json").read_text())
    finished = json.loads((tmp_path / "done.json").read_text())
    assert created["status"] in ("queued", "processing") and finished["id"] == created["id"]
    assert finished["status"] == "succeeded", finished
    assert (tmp_path / "image.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # What the README shows as the stored URL is what `make run` gives (its S3 on port 9000, default bucket).
    assert f"{env_names()['S3_ENDPOINT_URL']}/{env_names()['S3_BUCKET']}/generations/" in walk
