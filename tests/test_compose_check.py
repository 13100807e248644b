"""What `make compose-check` relies on that can be seen without running it: every image the compose file and the
Dockerfile name has a local stand-in (or is the one override's), and the override touches only MinIO's two
services. The check itself runs after the suite (`.ci/run`)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from common.presign import Presigner
from common.settings import Settings
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


def test_the_override_says_its_bucket_job_makes_no_user_for_the_services_and_why():
    """minio-init makes the services' own S3 user; the override's job does not (moto takes any key), and says so
    at the top, where the differences from MinIO are listed."""
    header = (ROOT / "devstack/compose_check/s3.override.yml").read_text().split("services:", 1)[0]
    assert "moto accepts any access key and checks no signature" in header
    assert "makes no S3\n# user for the services" in header
    job = OVERRIDE["services"]["minio-init"]
    assert job["command"] == ["exec python -m devstack.compose_check.bucket"]
    # Its own credentials are MinIO's root, as minio-init's are; the services keep their own user's.
    assert job["environment"]["AWS_ACCESS_KEY_ID"] == "studio" != stack.SERVICES_S3_KEY


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


def _presigned(endpoint: str, key_id: str) -> str:
    settings = Settings.from_env(
        {"S3_PUBLIC_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": "s" * 40}
    )
    return Presigner.from_settings(settings).url("generations/x.png", 3600)


def test_the_check_reads_outputs_only_through_urls_presigned_by_the_services_for_the_published_endpoint():
    assert stack.SERVICES_S3_KEY == "studio-services"  # minio-init's MINIO_STUDIO_USER, not MinIO's root
    ours = _presigned("http://localhost:9000", stack.SERVICES_S3_KEY)
    assert stack.presigned_problem(ours, "http://localhost:9000", stack.SERVICES_S3_KEY) == ""
    inside = _presigned("http://minio:9000", stack.SERVICES_S3_KEY)  # the address only the network knows
    assert "not on S3_PUBLIC_ENDPOINT_URL" in stack.presigned_problem(
        inside, "http://localhost:9000", "studio-services"
    )
    root = _presigned("http://localhost:9000", "studio")
    assert "not the services'" in stack.presigned_problem(root, "http://localhost:9000", stack.SERVICES_S3_KEY)
    public = "http://localhost:9000/studio-generations/generations/x.png"
    assert stack.presigned_problem(public, "http://localhost:9000", stack.SERVICES_S3_KEY) == (
        "not a SigV4-presigned URL"
    )


def test_the_check_tries_a_create_again_only_when_a_503_says_when():
    # The API's answer when Skytells' model schema cannot be read in time: 503 with Retry-After.
    assert stack.retry_after(503, {"retry-after": "5", "Content-Type": "application/json"}) == 5
    assert stack.retry_after(503, {"Retry-After": "2"}) == 2
    assert stack.retry_after(503, {}) is None
    assert stack.retry_after(429, {"Retry-After": "5"}) is None  # a quota or rate limit is a failure of the check
    assert stack.retry_after(201, {}) is None
