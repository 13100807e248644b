"""deploy/kubernetes as `kubectl kustomize` renders it: every core object valid for a named Kubernetes version
(strict: an unknown or misplaced field fails), what runs each process, probes, hardening, pinned images,
autoscaling, and nothing but the clients' paths behind the Ingress. The settings each container is given are
checked in `test_kubernetes_settings.py`."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import PurePosixPath
from typing import Any

import kubernetes_validate
import pytest

from common.topology import QUEUE
from tests.kubernetes_kit import (
    BASE,
    PROCESSES,
    ROOT,
    SPOOL_DIR,
    WORKLOADS,
    container_of,
    of_kind,
    pods,
    render,
    workloads,
)

# A recent release the installed kubernetes-validate carries schemas for.
KUBERNETES_VERSION = "1.35.0"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PROBES = ("/metrics", "/readyz", "/healthz")
# The binary suffixes of a Kubernetes quantity, as the manifests write sizes.
BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    """The base as `kubectl kustomize` renders it."""
    return render(BASE)


def test_the_base_holds_each_process_and_what_runs_it(objects):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert set(workloads(objects)) == set(PROCESSES)
    assert set(of_kind(objects, "StatefulSet")) == {"studio-persister"}
    assert set(of_kind(objects, "Service")) == set(PROCESSES)
    assert set(of_kind(objects, "PodDisruptionBudget")) == set(PROCESSES)
    assert set(of_kind(objects, "HorizontalPodAutoscaler")) == {"studio-api", "studio-webhook"}
    assert set(of_kind(objects, "ScaledObject")) == {"studio-persister", "studio-notifier"}
    assert set(of_kind(objects, "Job")) == {"studio-migrate"}
    assert {kind for kind, _ in kinds} == {
        "ConfigMap",
        "Deployment",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "Job",
        "Ingress",
    }
    # The Secret is named, never shipped: its values are the operator's.
    assert not of_kind(objects, "Secret")
    for name, (module, *_) in PROCESSES.items():
        assert container_of(objects, name)["command"] == ["python", "-m", module], name
    assert container_of(objects, "studio-migrate")["command"] == ["python", "-m", "common.migrate"]


def test_every_core_object_is_valid_for_a_recent_kubernetes_strictly(objects):
    core = [o for o in objects if not o["apiVersion"].startswith("keda.sh/")]
    assert len(core) == len(objects) - 2
    for o in core:
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)


def test_the_validation_is_strict_enough_to_catch_a_misplaced_field(objects):
    deployment = copy.deepcopy(of_kind(objects, "Deployment")["studio-api"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_keda_scales_the_persister_on_its_queue_and_the_notifier_on_due_deliveries(objects):
    scaled = of_kind(objects, "ScaledObject")
    for name, o in scaled.items():
        assert o["apiVersion"] == "keda.sh/v1alpha1"
        target, ref = workloads(objects)[name], o["spec"]["scaleTargetRef"]
        # KEDA scales an apps/v1 Deployment unless the reference names another kind.
        kind = (ref.get("apiVersion", "apps/v1"), ref.get("kind", "Deployment"))
        assert ref["name"] == name and kind == (target["apiVersion"], target["kind"])
        # Never none: the persister's reconciler and spool drainer, the notifier's first attempt within a second.
        assert o["spec"]["minReplicaCount"] >= 1 and o["spec"]["maxReplicaCount"] > o["spec"]["minReplicaCount"]
    (persister,) = scaled["studio-persister"]["spec"]["triggers"]
    assert persister["type"] == "rabbitmq"
    assert persister["metadata"]["queueName"] == QUEUE and persister["metadata"]["mode"] == "QueueLength"
    (notifier,) = scaled["studio-notifier"]["spec"]["triggers"]
    assert notifier["type"] == "postgresql"
    assert "FROM webhook_deliveries WHERE status = 'pending'" in notifier["metadata"]["query"]
    # The scalers read the broker's and the database's address from the very container they scale.
    pairs = ((persister, "AMQP_URL", "studio-persister"), (notifier, "DATABASE_URL", "studio-notifier"))
    for trigger, variable, name in pairs:
        source = next(k for k in trigger["metadata"] if k.endswith("FromEnv"))
        assert trigger["metadata"][source] == variable
        assert variable in {e["name"] for e in container_of(objects, name)["env"]}


def test_without_keda_the_persister_and_the_notifier_run_two_replicas_each(objects):
    overlay = render(ROOT / "deploy" / "kubernetes-without-keda")
    for o in overlay:
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
    assert not of_kind(overlay, "ScaledObject")
    fixed = workloads(overlay)
    assert fixed["studio-persister"]["kind"] == "StatefulSet"
    assert fixed["studio-persister"]["spec"]["replicas"] == fixed["studio-notifier"]["spec"]["replicas"] == 2
    # Everything else is the base's, unchanged.
    for o in overlay:
        if o["metadata"]["name"] not in ("studio-persister", "studio-notifier") or o["kind"] not in WORKLOADS:
            assert o in objects, (o["kind"], o["metadata"]["name"])
    assert len(overlay) == len(objects) - 2


def test_the_api_and_the_gateway_scale_on_cpu_with_two_at_least(objects):
    for name, hpa in of_kind(objects, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] >= 2
        # The count is the autoscaler's: a Deployment that fixed it would be reset by every `kubectl apply`.
        assert "replicas" not in of_kind(objects, "Deployment")[name]["spec"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert "cpu" in container_of(objects, name)["resources"]["requests"]  # utilisation is of the request


def test_probes_ask_healthz_and_readyz_on_the_process_port(objects):
    for name, (_, _, port_setting, port) in PROCESSES.items():
        container = container_of(objects, name)
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        assert {"name": port_setting, "value": str(port)} in container["env"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        service = of_kind(objects, "Service")[name]["spec"]
        assert service["type"] == "ClusterIP"  # inside the cluster only
        assert service["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
        template = workloads(objects)[name]["spec"]["template"]["metadata"]
        pod_labels = template["labels"]
        # Prometheus scrapes each replica where /metrics is, inside the cluster.
        assert template["annotations"]["prometheus.io/port"] == str(port)
        assert template["annotations"]["prometheus.io/path"] == "/metrics"
        assert service["selector"].items() <= pod_labels.items()
        assert (
            of_kind(objects, "PodDisruptionBudget")[name]["spec"]["selector"]["matchLabels"].items()
            <= pod_labels.items()
        )


def test_every_pod_runs_unprivileged_on_a_read_only_root_with_no_account_token(objects):
    for name, pod in pods(objects):
        assert pod["automountServiceAccountToken"] is False, name
        (container,) = pod["containers"]
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert isinstance(context["runAsUser"], int) and context["runAsUser"] > 0, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name
        # What the process may write goes to volumes of the pod's own (the persister's spool: its claim, below).
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], name
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, name


def test_the_persisters_spool_is_a_claim_of_each_replica_that_outlives_its_pod(objects):
    spec = of_kind(objects, "StatefulSet")["studio-persister"]["spec"]
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in container_of(objects, "studio-persister")["volumeMounts"]}
    assert mounts[SPOOL_DIR] == claim["metadata"]["name"]
    # The claim, not a volume of the pod (an emptyDir goes with the pod, and the outputs waiting in it).
    assert claim["metadata"]["name"] not in {v["name"] for v in spec["template"]["spec"]["volumes"]}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]  # the cluster's default
    # A replica scaled away or a StatefulSet deleted leaves its claim, to be drained when the ordinal returns.
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # Interchangeable consumers: started together, not one by one; the count is the autoscaler's.
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}
    assert "replicas" not in spec
    assert spec["serviceName"] in of_kind(objects, "Service")
    # The spool's cap stays below the claim, with room for the file system's journal and its blocks kept for
    # root (the process is not root).
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)", claim["spec"]["resources"]["requests"]["storage"]).groups()
    (config,) = of_kind(objects, "ConfigMap").values()
    assert int(config["data"]["SPOOL_MAX_BYTES"]) <= 0.8 * int(number) * BINARY[unit]


def test_every_image_is_pinned_to_a_version(objects):
    for name, pod in pods(objects):
        for container in pod["containers"]:
            image, _, tag = container["image"].rpartition(":")
            assert image and tag and tag != "latest" and "/" not in tag, f"{name}: {container['image']}"
            assert container["image"] == f"studio:{VERSION}", name


def _routes(ingress: dict[str, Any], path: str) -> str | None:
    """The service an Ingress sends `path` to, by the Exact and Prefix rules (the longest match wins)."""
    assert "defaultBackend" not in ingress["spec"]
    best: tuple[int, str] | None = None
    for rule in ingress["spec"]["rules"]:
        for route in rule["http"]["paths"]:
            rule_path, kind = route["path"], route["pathType"]
            if kind == "Exact":
                matched = path == rule_path
            else:
                assert kind == "Prefix", kind  # ImplementationSpecific would leave the matching to the controller
                prefix = PurePosixPath(rule_path).parts  # whole path elements: /api is not a prefix of /apis
                matched = PurePosixPath(path).parts[: len(prefix)] == prefix
            if matched and (best is None or len(rule_path) > best[0]):
                best = (len(rule_path), route["backend"]["service"]["name"])
    return best[1] if best else None


def test_the_ingress_routes_the_clients_paths_and_neither_metrics_nor_probes(objects):
    (ingress,) = of_kind(objects, "Ingress").values()
    assert _routes(ingress, "/api/webhooks") == "studio-webhook"
    # The API's own paths under /api/webhooks/ (the signing key) are the API's, not the gateway's.
    for path in ("/", "/static/app.js", "/api/generate", "/api/predictions/x/events", "/api/webhooks/secret"):
        assert _routes(ingress, path) == "studio-api", path
    for path in PROBES:
        assert _routes(ingress, path) is None, path


def test_the_readme_says_how_to_deploy_and_what_the_operator_brings():
    readme = (ROOT / "README.md").read_text()
    part = readme.split("\n### Scaling on Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    assert "kubectl -n studio apply -k deploy/kubernetes" in part
    assert "create secret generic studio-secrets" in part
    for brought in ("PostgreSQL", "RabbitMQ", "S3", "KEDA"):
        assert brought in part, brought
    assert f"Kubernetes {KUBERNETES_VERSION.rsplit('.', 1)[0]} schemas" in part
