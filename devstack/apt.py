"""Debian packages the local stack and the tests need, installed with apt when missing (as root: `apt-get update`
once per process, then `apt-get install`), so a fresh machine needs nothing prepared."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from devstack.processes import StartError

_lock = threading.Lock()
_updated = False


def ensure_installed(package: str, binary: Path, *, recommends: bool = True) -> None:
    """Install `package` unless `binary` exists; StartError when that cannot be done. `recommends=False` leaves
    out what the package only recommends (docker-compose recommends a whole Docker engine)."""
    global _updated
    if binary.exists():
        return
    if os.geteuid() != 0:
        raise StartError(f"{package} is missing and we are not root to install it: run `apt-get install -y {package}`")
    with _lock:
        if binary.exists():  # another thread installed it meanwhile
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if not _updated:
            subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
            _updated = True
        command = ["apt-get", "install", "-y", "-qq", *([] if recommends else ["--no-install-recommends"]), package]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not binary.exists():
            raise StartError(f"apt-get install {package} failed: {done.stderr.strip()[-2000:]}")
