"""The pinned, hashed dependency locks: they cover pyproject.toml, and every install takes them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


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
