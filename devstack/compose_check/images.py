"""Every image the compose check runs, built here with no registry: a Debian bookworm base from debootstrap
(cached on the machine), stand-ins for the official images docker-compose.yml and the Dockerfile name, tagged
with those very names so that nothing is pulled, Studio's image from its Dockerfile as it is, and the S3 server
of the check's override."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from devstack.compose_check.engine import podman
from devstack.processes import StartError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path("/var/cache/studio-compose-check")
# Bump to rebuild the base on machines that have one already.
BASE_VERSION = "bookworm-minbase-1"
BASE = f"localhost/studio-compose-check/bookworm:{BASE_VERSION}"
S3 = "localhost/studio-compose-check/s3:latest"
MIRROR = "http://deb.debian.org/debian"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
# The repository part of an official image name -> the folder under images/ of its stand-in.
STAND_INS = {"postgres": "postgres", "rabbitmq": "rabbitmq", "caddy": "caddy", "python": "python"}
# Replaced by s3.override.yml rather than stood in for.
OVERRIDDEN = {"minio/minio", "minio/mc"}


def qualified(name: str) -> str:
    """An image name as the Docker API resolves it: `postgres:16` is `docker.io/library/postgres:16`."""
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def repository(name: str) -> str:
    """`postgres` of `postgres:16`, `minio/minio` of `minio/minio:latest`."""
    return re.sub(r"[:@].*$", "", name.split("/", 1)[1] if name.startswith("docker.io/") else name).removeprefix(
        "library/"
    )


def _exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def base() -> str:
    """The bookworm base image: from podman's storage, else from the cached tarball, else debootstrapped anew."""
    if _exists(BASE):
        logger.info("  base %s: already built", BASE)
        return BASE
    tarball = CACHE / f"{BASE_VERSION}.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as work:
            rootfs = Path(work) / "rootfs"
            logger.info("  debootstrap --variant=minbase bookworm (about a minute)")
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise StartError(f"debootstrap failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")
            # Services a package installs must not start while an image is built.
            policy = rootfs / "usr/sbin/policy-rc.d"
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
            (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
            for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            partial = tarball.with_suffix(".partial")
            if subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=False).returncode != 0:
                raise StartError(f"tar of {rootfs} failed")
            partial.rename(tarball)
    podman("import", str(tarball), BASE)
    logger.info("  base %s imported from %s", BASE, tarball)
    return BASE


def build(tag: str, containerfile: Path, context: Path, **build_args: str) -> None:
    args = [f"--build-arg={name}={value}" for name, value in build_args.items()]
    podman("build", "--pull=never", "--quiet", *args, "-t", tag, "-f", str(containerfile), str(context), timeout=1800)
    logger.info("  built %s", tag)


def compose_images(compose_file: Path) -> set[str]:
    services = yaml.safe_load(compose_file.read_text())["services"]
    return {str(service["image"]) for service in services.values() if "image" in service}


def dockerfile_base(dockerfile: Path) -> str:
    found = re.search(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
    if found is None:
        raise StartError(f"{dockerfile} has no FROM line")
    return found.group(1)


def build_all(compose_file: Path, dockerfile: Path) -> None:
    """Every image `make up` needs, none pulled."""
    root = base()
    with tempfile.TemporaryDirectory() as work:
        context = Path(work) / "python"
        shutil.copytree(HERE / "images/python", context)
        (context / "ca").mkdir()
        for authority in LOCAL_CAS.glob("**/*.crt"):
            shutil.copy(authority, context / "ca" / authority.name)
        python = qualified(dockerfile_base(dockerfile))
        build(python, context / "Containerfile", context, BASE=root)
    studio = ""
    for name in sorted(compose_images(compose_file)):
        kind = repository(qualified(name))
        if kind in OVERRIDDEN:
            continue
        if name.startswith("studio:"):
            studio = name
            continue
        if "@" in name:
            raise StartError(f"{name}: an image pinned by digest cannot be stood in for by a local build")
        folder = STAND_INS.get(kind)
        if folder is None:
            raise StartError(f"{name}: no stand-in for this image under {HERE / 'images'}")
        build(qualified(name), HERE / "images" / folder / "Containerfile", HERE / "images" / folder, BASE=root)
    if not studio:
        raise StartError(f"{compose_file} names no studio image")
    # The repository's own Dockerfile, as it is, on the stand-in of its base.
    build(studio, dockerfile, dockerfile.parent)
    build(S3, HERE / "images/s3/Containerfile", ROOT, BASE=python)
    prune()


def prune() -> None:
    """Remove the untagged images that later builds replaced (`make up --build` replaces the one built here):
    the machine's disk is shared."""
    podman("image", "prune", "--force")
