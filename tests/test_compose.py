"""What can be checked of docker-compose.yml and the Dockerfile as written, without a Docker engine
(`tests/test_compose_config.py` checks the file as compose renders it)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from common.settings import (
    env_names,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()

OURS = {"migrate", "api", "webhook", "persister", "notifier", "skytells-sim"}

ONE_SHOT = {"migrate", "minio-init"}
SCALED = {"api", "webhook", "persister", "notifier"}
PROXIES = {"api-proxy": ("api", 8080), "webhook-proxy": ("webhook", 8081)}
# What compose fixes because it names its own containers, ports and credentials; every other setting passes.
IMAGE_PREFIXES = {"postgres": "POSTGRES_", "rabbitmq": "RABBITMQ_", "minio": "MINIO_", "skytells-sim": "SIM_"}
ENTRY_MODULES = {
    "services.api",
    "services.webhook",
    "services.persister",
    "services.notifier",
    "common.migrate",
    "devstack.skytells",
}


def _command(service: dict) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def _module(service: dict) -> str:
    command = _command(service)
    assert command[:2] == ["python", "-m"], command
    return command[2]


def test_every_service_is_there():
    expected = {"postgres", "rabbitmq", "minio", "minio-init"} | set(PROXIES) | OURS
    assert set(SERVICES) == expected


@pytest.mark.parametrize("name", sorted(set(SERVICES) - ONE_SHOT))
def test_every_long_running_service_has_a_healthcheck(name):
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1


@pytest.mark.parametrize("name", sorted(OURS - ONE_SHOT))
def test_our_healthchecks_ask_our_own_probe_on_our_own_port(name):
    service = SERVICES[name]
    probe = " ".join(service["healthcheck"]["test"])
    port = {"api": 8080, "webhook": 8081, "persister": 8082, "notifier": 8083, "skytells-sim": 8090}[name]
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
        "notifier": {"migrate": "service_completed_successfully"},
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
