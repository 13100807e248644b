"""What `make compose-check` relies on that can be seen without running it: every image the compose file and the
Dockerfile name has a local stand-in (or is the one override's), and the override touches only MinIO's two
services. The check itself runs after the suite (`.ci/run`)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from devstack.compose_check import images, stack

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
OVERRIDE = yaml.safe_load((ROOT / "devstack/compose_check/s3.override.yml").read_text())


def test_image_names_are_qualified_as_the_docker_api_does():
    assert images.qualified("postgres:16") == "docker.io/library/postgres:16"
    assert images.qualified("minio/minio:latest") == "docker.io/minio/minio:latest"
    assert images.qualified("localhost/x:1") == "localhost/x:1"
    assert images.qualified("quay.io/a/b:2") == "quay.io/a/b:2"
    assert images.repository("docker.io/library/rabbitmq:3.13-management") == "rabbitmq"
    assert images.repository("docker.io/minio/mc:latest") == "minio/mc"


def test_every_image_has_a_stand_in_or_is_overridden():
    named = images.compose_images(ROOT / "docker-compose.yml") | {images.dockerfile_base(ROOT / "Dockerfile")}
    for name in named:
        if name.startswith("studio:"):
            continue
        kind = images.repository(images.qualified(name))
        assert kind in images.OVERRIDDEN or kind in images.STAND_INS, name
        if kind in images.STAND_INS:
            assert (images.HERE / "images" / images.STAND_INS[kind] / "Containerfile").is_file(), name


def test_the_override_replaces_only_minio_and_its_bucket_job():
    assert set(OVERRIDE["services"]) == {"minio", "minio-init"}
    assert OVERRIDE["services"]["minio"]["command"][:3] == ["python", "-m", "devstack.moto_server"]
    text = (ROOT / "devstack/compose_check/s3.override.yml").read_text()
    assert text.startswith("# `make compose-check` only: MinIO cannot be had")


def test_the_bucket_job_runs_in_the_studio_image_the_compose_file_builds():
    studio = {name for name in images.compose_images(ROOT / "docker-compose.yml") if name.startswith("studio:")}
    assert studio == {OVERRIDE["services"]["minio-init"]["image"]}


def test_the_check_scales_every_service_the_compose_file_says_scales():
    # The file's own `docker compose up ... --scale` line at its top names them.
    named = set(re.findall(r"--scale ([\w-]+)=", COMPOSE_TEXT.split("services:", 1)[0]))
    assert named == {"api", "webhook", "persister", "notifier"}
    assert set(stack.SCALED) == named and set(stack.SCALED.values()) == {2}


def test_the_check_sees_every_service_that_waits_for_the_migrations_start_after_them():
    assert stack.waits_for("migrate") == {"api", "persister", "notifier"}
