"""Each container of deploy/kubernetes given exactly the settings its process reads (the settings module's
declaration, as the compose test checks), secrets from the named Secret and the rest from the ConfigMap, and a
process that starts with them."""

from __future__ import annotations

import re
from typing import Any

import pytest

from common.settings import API, API_REQUIRED, WEBHOOK, WEBHOOK_REQUIRED, Settings, declared
from tests.kubernetes_kit import (
    BASE,
    FIXED,
    OPTIONAL_SECRETS,
    PROCESSES,
    SECRET,
    SECRETS,
    container_of,
    of_kind,
    pods,
    read_by,
    render,
)
from tests.test_compose_config import STUDIO

REQUIRED = {API: API_REQUIRED, WEBHOOK: WEBHOOK_REQUIRED}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    """The base as `kubectl kustomize` renders it."""
    return render(BASE)


def test_each_container_gets_exactly_the_settings_its_process_reads(objects):
    for name, (_, reader, _, _) in PROCESSES.items():
        env = {e["name"] for e in container_of(objects, name)["env"]}
        reads = read_by(reader)
        assert env == reads, f"{name}: add {sorted(reads - env)}, remove {sorted(env - reads)}"
    migrate = {e["name"] for e in container_of(objects, "studio-migrate")["env"]}
    assert migrate == STUDIO["migrate"][0]


def test_secrets_come_from_the_named_secret_and_the_rest_from_the_config_map(objects):
    (config,) = of_kind(objects, "ConfigMap").values()
    declared_names = {var.env for var in declared().values()}
    assert set(config["data"]) <= declared_names - SECRETS - set(FIXED), "the ConfigMap holds no secret"
    for name, _ in pods(objects):
        for e in container_of(objects, name)["env"]:
            variable = e["name"]
            if variable in FIXED:
                assert e == {"name": variable, "value": FIXED[variable]}, f"{name}: {variable}"
            elif variable in SECRETS:
                ref = {"name": SECRET, "key": variable} | ({"optional": True} if variable in OPTIONAL_SECRETS else {})
                assert e["valueFrom"] == {"secretKeyRef": ref}, f"{name}: {variable}"
            else:
                # Optional: a key not in the ConfigMap leaves the variable unset, and the process's default applies.
                ref = {"name": config["metadata"]["name"], "key": variable, "optional": True}
                assert e["valueFrom"] == {"configMapKeyRef": ref}, f"{name}: {variable}"


def test_each_container_starts_with_the_config_map_and_a_filled_secret(objects):
    (config,) = of_kind(objects, "ConfigMap").values()
    secret = {name: f"a-{name.lower()}-of-32-characters-or-more" for name in SECRETS}
    secret |= {"DATABASE_URL": "postgresql://studio:pw@postgres:5432/studio", "AMQP_URL": "amqp://studio:pw@rabbitmq/"}
    for name, (_, reader, _, _) in PROCESSES.items():
        environ = {}
        for e in container_of(objects, name)["env"]:
            if "value" in e:
                environ[e["name"]] = e["value"]
            elif e["name"] in secret:
                environ[e["name"]] = secret[e["name"]]
            elif e["name"] in config["data"]:
                environ[e["name"]] = config["data"][e["name"]]
        if reader in {who for var in declared().values() for who in var.readers}:
            Settings.from_env(environ, required=REQUIRED.get(reader, ()))


def test_the_secrets_readme_creates_every_key_the_manifests_read(objects):
    keys = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for name, _ in pods(objects)
        for e in container_of(objects, name)["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert keys == SECRETS
    readme = (BASE / "README.md").read_text()
    command = readme.split("kubectl create secret generic studio-secrets", 1)[1].split("```", 1)[0]
    assert set(re.findall(r"--from-literal=(\w+)=", command)) == keys
