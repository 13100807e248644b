"""deploy/kubernetes as `kubectl kustomize` renders it, and what the manifests are checked against: the
processes, the settings each reads, which of them are secrets."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.settings import API, PERSISTER, WEBHOOK, declared

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "kubernetes"
# Workload -> (its process's module, its reader in the settings declaration, its port setting and value).
PROCESSES = {
    "studio-api": ("services.api", API, "API_PORT", 8080),
    "studio-webhook": ("services.webhook", WEBHOOK, "WEBHOOK_PORT", 8081),
    "studio-persister": ("services.persister", PERSISTER, "PERSISTER_PORT", 8082),
    "studio-notifier": ("services.notifier", "notifier", "NOTIFIER_PORT", 8083),
}
SECRET = "studio-secrets"
# Credentials, and URLs that carry them: from the Secret, never from the ConfigMap.
SECRETS = {
    "DATABASE_URL",
    "AMQP_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "SKYTELLS_API_KEY",
    "SKYTELLS_WEBHOOK_SECRET",
    "AUTH_JWT_SECRET",
}
OPTIONAL_SECRETS = {"AUTH_JWT_SECRET"}  # an identity provider's JWKS may stand in for it
SPOOL_DIR = "/var/lib/studio/spool"
# Fixed by the manifests: how the pods listen, and where the persister's spool volume is.
FIXED = {"BIND_HOST": "0.0.0.0", "SPOOL_DIR": SPOOL_DIR} | {
    port: str(value) for _, _, port, value in PROCESSES.values()
}


def render(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: install it (https://kubernetes.io/docs/tasks/tools/) to render the base")
    done = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


# What runs a process: a Deployment, or a StatefulSet where its replicas keep a volume of their own.
WORKLOADS = ("Deployment", "StatefulSet")


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What runs each process, by name, whichever of the workload kinds it is."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] in WORKLOADS}


def pods(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template: the processes' workloads' and the migrations Job's."""
    for o in objects:
        if o["kind"] in (*WORKLOADS, "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def container_of(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    workload = {**workloads(objects), **of_kind(objects, "Job")}[name]
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def read_by(reader: str) -> set[str]:
    readers = {who for var in declared().values() for who in var.readers}
    if reader not in readers:
        pytest.fail(f"no setting in common/settings.py names {reader!r} among its readers")
    return {var.env for var in declared().values() if reader in var.readers}
