"""docker-compose.yml as Debian's `docker-compose config` renders it from an `.env` (no engine needed): each
setting reaches the containers whose process reads it, and no secret has a default."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from common.settings import (
    API,
    API_REQUIRED,
    NOTIFIER,
    NOTIFIER_REQUIRED,
    PERSISTER,
    PERSISTER_REQUIRED,
    WEBHOOK,
    WEBHOOK_REQUIRED,
    Settings,
    declared,
    env_names,
)
from devstack import apt, compose_env

ROOT = Path(__file__).resolve().parent.parent

# Studio container -> (the variables its process reads, those it cannot start without).
STUDIO = {
    name: ({var.env for var in declared().values() if reader in var.readers}, required)
    for name, reader, required in (
        ("api", API, API_REQUIRED),
        ("webhook", WEBHOOK, WEBHOOK_REQUIRED),
        ("persister", PERSISTER, PERSISTER_REQUIRED),
        ("notifier", NOTIFIER, NOTIFIER_REQUIRED),
    )
}
STUDIO["migrate"] = ({"DATABASE_URL", "LOG_LEVEL"}, ())  # it only migrates, and logs
WIRED = {
    "DATABASE_URL",
    "AMQP_URL",
    "S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "BIND_HOST",  # the proxies and healthchecks reach a container on its own address
    "API_PORT",
    "WEBHOOK_PORT",
    "PERSISTER_PORT",
    "NOTIFIER_PORT",
}
SECRETS = (
    "AUTH_JWT_SECRET",
    "POSTGRES_PASSWORD",
    "RABBITMQ_DEFAULT_PASS",
    "MINIO_ROOT_PASSWORD",
    "MINIO_STUDIO_SECRET_KEY",
    "SKYTELLS_API_KEY",
    "SKYTELLS_WEBHOOK_SECRET",
)
# Values unlike the defaults, to see each one arrive; any other setting gets its default, written out.
SAMPLES = {
    "PERSISTER_MAX_ATTEMPTS": "3",
    "ALLOWED_MODELS": "truefusion-edge",
    "S3_BUCKET": "other-bucket",
    "S3_PUBLIC_BASE_URL": "https://images.example.com/other-bucket",
    "LOG_LEVEL": "DEBUG",
    "RETRY_MAX_S": "60",
}


# Variables an image reads itself, beside Studio's settings.
@pytest.fixture(scope="module")
def docker_compose() -> str:
    """Debian's docker-compose (v1: renders and validates the file, needs no engine), installed when missing."""
    binary = Path("/usr/bin/docker-compose")
    apt.ensure_installed("docker-compose", binary, recommends=False)  # no engine: rendering needs none
    return str(binary)


@pytest.fixture(scope="module")
def dotenv() -> dict[str, str]:
    """The .env `make up` writes, as a mapping."""
    return _assignments(compose_env.fill((ROOT / ".env.example").read_text()))


def _assignments(text: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=(.*)$", text, re.M))


def _render(binary: str, tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Only the given .env counts: none from the checkout, no variable from this process's environment.
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    command = [binary, "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(env_file), *args, "config"]
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=clean, cwd=tmp_path, check=False)


def _rendered(binary: str, tmp_path: Path, env: dict[str, str]) -> dict:
    done = _render(binary, tmp_path, env)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


def test_every_setting_reaches_the_studio_services_that_read_it(docker_compose, dotenv, tmp_path):
    passed = set(env_names()) - WIRED
    env = {**dotenv, **{name: SAMPLES.get(name, env_names()[name]) for name in passed if name not in dotenv}}
    rendered = _rendered(docker_compose, tmp_path, env)
    for name, (reads, required) in STUDIO.items():
        environment = rendered[name]["environment"]
        assert set(environment) == reads, f"{name}: {reads ^ set(environment)}"
        for variable in reads & passed:
            assert environment[variable] == env[variable], f"{name}: {variable}"
        # What the container gets is a configuration its process starts with.
        Settings.from_env(environment, required=required)
    for name in ("webhook", "persister"):
        assert rendered[name]["environment"]["PERSISTER_MAX_ATTEMPTS"] == "3"
    assert rendered["api"]["environment"]["ALLOWED_MODELS"] == "truefusion-edge"
    # Least privilege: the gateway holds no database, storage or API secret.
    assert not {"DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "SKYTELLS_API_KEY", "AUTH_JWT_SECRET"} & STUDIO["webhook"][0]


def test_an_unset_setting_stays_unset_so_the_service_default_applies(docker_compose, dotenv, tmp_path):
    env = {name: value for name, value in dotenv.items() if name in SECRETS}
    environment = _rendered(docker_compose, tmp_path, env)["api"]["environment"]
    unset = {name for name, value in environment.items() if value is None}
    assert unset == STUDIO["api"][0] - WIRED - set(SECRETS)
    defaults = Settings.from_env({k: v for k, v in environment.items() if v is not None}, required=API_REQUIRED)
    assert defaults.allowed_models == tuple(env_names()["ALLOWED_MODELS"].split(","))


@pytest.mark.parametrize("profile", [[], ["--profile", "sim"]], ids=["skytells", "simulator"])
def test_compose_refuses_to_start_with_env_example_as_it_is(docker_compose, tmp_path, profile):
    """.env.example holds no secret, and compose starts nothing without them, simulator or not."""
    example = _assignments((ROOT / ".env.example").read_text())
    assert {name: example[name] for name in SECRETS} == dict.fromkeys(SECRETS, "")
    done = _render(docker_compose, tmp_path, example, *profile)
    assert done.returncode != 0 and "Missing mandatory value" in done.stderr
    assert any(f"set {secret}" in done.stderr for secret in SECRETS), done.stderr


def test_make_ups_env_runs_the_simulator_with_secrets_found_nowhere_in_the_repository(docker_compose, dotenv, tmp_path):
    assert dotenv["COMPOSE_PROFILES"] == "sim"
    rendered = _rendered(docker_compose, tmp_path, dotenv)
    sim = rendered["skytells-sim"]["environment"]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    repository = "".join((ROOT / path).read_text(errors="replace") for path in tracked if (ROOT / path).is_file())
    services = {name: rendered[name]["environment"] for name in ("api", "webhook", "persister")}
    assert services["api"]["SKYTELLS_API_KEY"] == services["persister"]["SKYTELLS_API_KEY"] == sim["SIM_API_KEY"]
    assert services["webhook"]["SKYTELLS_WEBHOOK_SECRET"] == sim["SIM_WEBHOOK_SECRET"]
    assert dotenv["SKYTELLS_BASE_URL"] == "http://skytells-sim:8090/v1"
    assert (
        services["api"]["SKYTELLS_BASE_URL"]
        == services["persister"]["SKYTELLS_BASE_URL"]
        == "http://skytells-sim:8090/v1"
    )
    assert "skytells-sim" in services["persister"]["OUTPUT_ALLOWED_HOSTS"]
    secrets = {name: value for environment in services.values() for name, value in environment.items()}
    for secret in ("SKYTELLS_API_KEY", "SKYTELLS_WEBHOOK_SECRET", "AUTH_JWT_SECRET"):
        assert len(secrets[secret]) >= 32 and secrets[secret] not in repository, secret
    # A second .env is not the first one's secrets again.
    assert compose_env.fill("AUTH_JWT_SECRET=\n") != compose_env.fill("AUTH_JWT_SECRET=\n")


def test_make_up_never_overwrites_an_existing_env(tmp_path):
    example = tmp_path / "example"
    example.write_text("# a comment\nKEEP=as-is\nSECRET=\n")
    target = tmp_path / ".env"
    assert compose_env.write(example, target)
    first = target.read_text()
    assert first.startswith("# a comment\nKEEP=as-is\nSECRET=") and re.search(r"^SECRET=[0-9a-f]{64}$", first, re.M)
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert not compose_env.write(example, target) and target.read_text() == first


def test_the_compose_file_requires_every_secret_wherever_it_uses_one():
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in SECRETS:
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, secret
        assert all(use.startswith(f":?set {secret}") for use in uses), f"{secret} must be ${{{secret}:?...}}"
    assert "sim-key" not in text and "sim-secret" not in text


def test_skytells_calls_back_through_the_gateways_proxy(dotenv):
    assert dotenv["PUBLIC_WEBHOOK_URL"] == "http://webhook-proxy:8081/api/webhooks"


@pytest.mark.parametrize("access", ["signed", "public"])
def test_the_bucket_job_opens_generations_only_when_public_and_makes_the_services_user(
    docker_compose, dotenv, tmp_path, access
):
    """The job's own script, run with an `mc` that records what it is asked: the bucket's anonymous access, and
    the S3 user the services work as (allowed this bucket only), never MinIO's root."""
    rendered = _rendered(docker_compose, tmp_path, {**dotenv, "S3_OUTPUT_ACCESS": access, "S3_BUCKET": "pics"})
    job = rendered["minio-init"]
    bin_dir, calls = tmp_path / "bin", tmp_path / "mc.log"
    bin_dir.mkdir()
    (bin_dir / "mc").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "mc").chmod(0o755)
    env = {**job["environment"], "PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path)}

    # `config` keeps compose's `$$` escapes (its output is a compose file again); a container gets them as `$`.
    script = [part.replace("$$", "$") for part in job["command"]]
    done = subprocess.run([*job["entrypoint"], *script], env=env, capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    asked = calls.read_text().splitlines()
    anonymous = [line for line in asked if line.startswith("anonymous ")]
    if access == "public":
        assert anonymous == ["anonymous set download studio/pics/generations"]
    else:  # none, and whatever a public run left is removed
        assert anonymous == ["anonymous set none studio/pics/generations", "anonymous set none studio/pics"]
    services = {name: rendered[name]["environment"] for name in ("api", "persister")}
    user, secret = job["environment"]["MINIO_STUDIO_USER"], job["environment"]["MINIO_STUDIO_SECRET_KEY"]
    assert f"admin user add studio {user} {secret}" in asked
    assert f"admin policy attach studio studio-bucket --user {user}" in asked
    for environment in services.values():
        assert (environment["AWS_ACCESS_KEY_ID"], environment["AWS_SECRET_ACCESS_KEY"]) == (user, secret)
        assert environment["AWS_ACCESS_KEY_ID"] != job["environment"]["MINIO_ROOT_USER"]
        assert environment["AWS_SECRET_ACCESS_KEY"] != job["environment"]["MINIO_ROOT_PASSWORD"]
    policy = json.loads((tmp_path / "studio-bucket.json").read_text())
    resources = {resource for statement in policy["Statement"] for resource in statement["Resource"]}
    assert resources == {"arn:aws:s3:::pics", "arn:aws:s3:::pics/*"}
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])


def test_make_ups_env_presigns_output_urls_for_the_s3_port_published_on_the_host(docker_compose, dotenv, tmp_path):
    """Signed outputs (the default) are presigned for S3_PUBLIC_ENDPOINT_URL: from the host that must be MinIO's
    published port, not `minio:9000`, which only the containers resolve (the signature covers the host)."""
    rendered = _rendered(docker_compose, tmp_path, dotenv)
    # compose writes a port on every interface as a mapping, one kept to an address as "address:host:container"
    ports = rendered["minio"]["ports"]
    published = [p["published"] for p in ports if isinstance(p, dict) and p["target"] == 9000]
    endpoint = urlsplit(dotenv["S3_PUBLIC_ENDPOINT_URL"])
    assert (endpoint.scheme, endpoint.hostname, [endpoint.port]) == ("http", "localhost", [int(p) for p in published])
    assert dotenv["S3_PUBLIC_BASE_URL"] == f"{dotenv['S3_PUBLIC_ENDPOINT_URL']}/studio-generations"
    assert "S3_OUTPUT_ACCESS" not in dotenv  # signed, the default
    for name in ("api", "notifier"):  # those that hand output URLs out
        assert rendered[name]["environment"]["S3_PUBLIC_ENDPOINT_URL"] == dotenv["S3_PUBLIC_ENDPOINT_URL"]
        assert rendered[name]["environment"]["S3_ENDPOINT_URL"] == "http://minio:9000"
