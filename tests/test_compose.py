"""What can be checked of docker-compose.yml, the Dockerfile and the lock without a Docker engine: the file as
written, and as Debian's `docker-compose config` renders it from an `.env`."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from common.settings import (
    API,
    API_REQUIRED,
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
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()

OURS = {"migrate", "api", "webhook", "persister", "skytells-sim"}
# Studio container -> (the variables its process reads, those it cannot start without).
STUDIO = {
    name: ({var.env for var in declared().values() if reader in var.readers}, required)
    for name, reader, required in (
        ("api", API, API_REQUIRED),
        ("webhook", WEBHOOK, WEBHOOK_REQUIRED),
        ("persister", PERSISTER, PERSISTER_REQUIRED),
    )
}
STUDIO["migrate"] = ({"DATABASE_URL", "LOG_LEVEL"}, ())  # it only migrates, and logs
ONE_SHOT = {"migrate", "minio-init"}
SCALED = {"api", "webhook", "persister"}
PROXIES = {"api-proxy": ("api", 8080), "webhook-proxy": ("webhook", 8081)}
# What compose fixes because it names its own containers, ports and credentials; every other setting passes.
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
}
SECRETS = (
    "AUTH_JWT_SECRET",
    "POSTGRES_PASSWORD",
    "RABBITMQ_DEFAULT_PASS",
    "MINIO_ROOT_PASSWORD",
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
IMAGE_PREFIXES = {"postgres": "POSTGRES_", "rabbitmq": "RABBITMQ_", "minio": "MINIO_", "skytells-sim": "SIM_"}
ENTRY_MODULES = {"services.api", "services.webhook", "services.persister", "common.migrate", "devstack.skytells"}


def _command(service: dict) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def _module(service: dict) -> str:
    command = _command(service)
    assert command[:2] == ["python", "-m"], command
    return command[2]


@pytest.fixture(scope="module")
def docker_compose() -> str:
    """Debian's docker-compose (v1: renders and validates the file, needs no engine), installed when missing."""
    binary = Path("/usr/bin/docker-compose")
    apt.ensure_installed("docker-compose", binary)
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


def test_every_service_is_there():
    expected = {"postgres", "rabbitmq", "minio", "minio-init"} | set(PROXIES) | OURS
    assert set(SERVICES) == expected


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


@pytest.mark.parametrize("name", sorted(set(SERVICES) - ONE_SHOT))
def test_every_long_running_service_has_a_healthcheck(name):
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1


@pytest.mark.parametrize("name", sorted(OURS - ONE_SHOT))
def test_our_healthchecks_ask_our_own_probe_on_our_own_port(name):
    service = SERVICES[name]
    probe = " ".join(service["healthcheck"]["test"])
    port = {"api": 8080, "webhook": 8081, "persister": 8082, "skytells-sim": 8090}[name]
    path = "/healthz" if name == "skytells-sim" else "/readyz"
    assert f"http://127.0.0.1:{port}{path}" in probe
    assert "urllib.request.urlopen" in probe  # slim images have no curl


def test_one_shot_jobs_do_not_restart():
    for name in ONE_SHOT:
        assert SERVICES[name]["restart"] == "no", name
        assert "healthcheck" not in SERVICES[name]


def test_dependencies_wait_for_health_or_completion():
    expected = {
        "minio-init": {"minio": "service_healthy"},
        "migrate": {"postgres": "service_healthy"},
        "api": {"migrate": "service_completed_successfully"},
        "api-proxy": {"api": "service_healthy"},
        "webhook": {"rabbitmq": "service_healthy"},
        "webhook-proxy": {"webhook": "service_healthy"},
        "persister": {
            "migrate": "service_completed_successfully",
            "rabbitmq": "service_healthy",
            "minio-init": "service_completed_successfully",
        },
    }
    for name, service in SERVICES.items():
        depends = {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
        assert depends == expected.get(name, {}), name


def test_environment_names_are_settings_names_or_the_images_own():
    settings = set(env_names())
    for name, service in SERVICES.items():
        names = set(service.get("environment", {}))
        prefix = IMAGE_PREFIXES.get(name)
        own = {n for n in names if prefix and n.startswith(prefix)}
        if name == "minio-init":
            own = {n for n in names if n.startswith("MINIO_")}
        unknown = names - own - settings
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(SCALED))
def test_scaled_services_have_no_fixed_name_or_host_port(name):
    service = SERVICES[name]
    assert "container_name" not in service
    assert "ports" not in service  # `expose` only: replicas would fight over a host port


@pytest.mark.parametrize("proxy", sorted(PROXIES))
def test_each_scaled_http_service_is_reached_through_one_proxy(proxy):
    target, port = PROXIES[proxy]
    service = SERVICES[proxy]
    assert f"{target}:{port}" in _command(service)
    assert service["ports"] == [f"{port}:{port}"]
    assert SERVICES[target]["expose"] == [str(port)]
    assert service["depends_on"] == {target: {"condition": "service_healthy"}}
    # The only published ports: the proxies, MinIO (outputUrl) and its console, RabbitMQ's management UI.
    published = {p for s in SERVICES.values() for p in s.get("ports", [])}
    assert published == {"8080:8080", "8081:8081", "9000:9000", "9001:9001", "15672:15672"}


def test_skytells_calls_back_through_the_gateways_proxy(dotenv):
    assert dotenv["PUBLIC_WEBHOOK_URL"] == "http://webhook-proxy:8081/api/webhooks"


def test_the_simulator_is_a_profile_of_its_own():
    sim = SERVICES["skytells-sim"]
    assert sim["profiles"] == ["sim"]
    assert sim["environment"]["SIM_HOST"] == "0.0.0.0"
    assert sim["environment"]["SIM_PUBLIC_URL"] == "http://skytells-sim:8090"
    for name in set(SERVICES) - {"skytells-sim"}:
        assert "profiles" not in SERVICES[name], name


def test_the_bucket_job_makes_generations_public_and_nothing_else():
    script = " ".join(SERVICES["minio-init"]["command"])
    assert 'mc mb --ignore-existing "studio/$$S3_BUCKET"' in script
    assert 'mc anonymous set download "studio/$$S3_BUCKET/generations"' in script


def test_every_studio_container_runs_a_real_module_from_the_one_image():
    modules = set()
    for name in OURS:
        service = SERVICES[name]
        assert service["build"] == "." and service["image"] == "studio:latest", name
        modules.add(_module(service))
    assert modules == ENTRY_MODULES
    cmd = re.search(r'^CMD \["python", "-m", "([\w.]+)"\]', DOCKERFILE, re.M)
    assert cmd is not None
    for module in modules | {cmd.group(1)}:
        assert importlib.util.find_spec(module) is not None, module
        if importlib.util.find_spec(module).submodule_search_locations:  # a package: needs __main__
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module


def test_dockerfile_is_slim_python_311_running_as_non_root():
    assert re.search(r"^FROM python:3\.11-slim\b", DOCKERFILE, re.M)
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    # Every package of the project is copied into the image, or `pip install .` would leave it out.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in (pattern.rstrip("*") for pattern in packages["include"]):
        assert f"COPY {package} ./{package}" in DOCKERFILE, package


def test_dockerignore_keeps_secrets_and_the_venv_out_of_the_image():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git"} <= ignored


def test_entry_modules_need_only_the_runtime_dependencies_the_image_installs():
    # The image installs pyproject's `dependencies`, not the dev extras: an entry point importing one would crash.
    probe = (
        "import importlib, sys\n"
        "for m in ('services.api.app', 'services.webhook.app', 'services.persister.app', 'common.migrate',"
        " 'devstack.skytells.app'):\n"
        "    importlib.import_module(m)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'moto', 'pytest', 'yaml', 'hypothesis', 'mypy'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def _pins(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    pinned = r"^([A-Za-z0-9][\w.-]*)==([^\s;]+)(?: ;[^\\\n]*)?((?: \\\n    --hash=sha256:[0-9a-f]{64})+)"
    entries = re.findall(pinned, text, re.M)
    # Every requirement line is pinned and hashed: a line without its hash would not have matched.
    assert len(entries) == len(re.findall(r"^[A-Za-z0-9]", text, re.M)), lock
    return {canonicalize_name(name): version for name, version, _ in entries}


def test_the_locks_pin_and_hash_every_dependency_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = project["build-system"]["requires"]
    runtime = project["project"]["dependencies"]
    dev = project["project"]["optional-dependencies"]["dev"]
    locks = {"requirements.lock": runtime + build, "requirements-dev.lock": runtime + dev + build}
    pins = {lock: _pins(lock) for lock in locks}
    for lock, wanted in locks.items():
        for line in wanted:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            assert name in pins[lock], f"{lock} lacks {name}: run make lock"
            assert requirement.specifier.contains(pins[lock][name], prereleases=True), f"{lock}: {line}"
    # The image runs what CI tested: the runtime lock is the dev lock's subset, version for version.
    runtime_pins, dev_pins = pins["requirements.lock"], pins["requirements-dev.lock"]
    assert {name: dev_pins.get(name) for name in runtime_pins} == runtime_pins


def test_make_install_ci_and_the_image_install_from_the_locks():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --require-hashes -r requirements-dev.lock" in makefile
    assert re.search(r"pip install .*--no-index --no-build-isolation -e '\.\[dev\]'", makefile)
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert "RUN pip install --require-hashes -r requirements.lock" in DOCKERFILE
    assert "pip install --no-deps --no-build-isolation ." in DOCKERFILE and "pip check" in DOCKERFILE
    assert "requirements.lock" not in (ROOT / ".dockerignore").read_text()
