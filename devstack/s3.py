"""An S3 server speaking the real wire protocol: moto in server mode (`moto_server.py`), as a child process.

moto holds objects in memory; our wrapper saves them to a state folder when it stops and loads them when it
starts, so `halt` then `resume` (an outage) keeps the bucket. With `data_dir` the folder is kept across runs of
the stack; without, it is temporary and a final `stop` does not bother saving.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from devstack.processes import ManagedProcess, http_ok, wait_until

SAVE_TIMEOUT_S = 300.0  # a stop saves every changed object first: leave it the time to


class S3Server:
    def __init__(self, endpoint_url: str, base_dir: Path | None = None, *, data_dir: Path | None = None) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.port = urlsplit(endpoint_url).port or 80
        self.kept = data_dir is not None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="studio-s3-", dir=base_dir))
        self.process: ManagedProcess | None = None

    def start(self, timeout: float = 60.0) -> S3Server:
        return self.resume(timeout)

    def resume(self, timeout: float = 60.0) -> S3Server:
        """Start (again, after `halt`), with the objects saved at the last stop."""
        argv = [sys.executable, "-m", "devstack.moto_server", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = ManagedProcess(
            "s3", [*argv, "--state", str(self.dir / "state")], log_path=self.dir / "s3.log"
        ).start()
        wait_until(
            f"S3 server on port {self.port}",
            lambda: http_ok(f"{self.endpoint_url}/moto-api/"),
            timeout,
            self.process,
        )
        return self

    def halt(self) -> None:
        """Stop, saving the objects: connections are refused until `resume`."""
        if self.process is not None:
            self.process.stop(timeout=SAVE_TIMEOUT_S)
            self.process = None

    def stop(self) -> None:
        if not self.kept and self.process is not None:
            self.process.kill()  # nothing to keep: no need to save
        self.halt()
        if not self.kept:
            shutil.rmtree(self.dir, ignore_errors=True)
