"""An S3 server speaking the real wire protocol: moto in server mode, as a child process."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from devstack.processes import ManagedProcess, http_ok, wait_until


class S3Server:
    def __init__(self, endpoint_url: str, base_dir: Path | None = None) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.port = urlsplit(endpoint_url).port or 80
        self.dir = Path(tempfile.mkdtemp(prefix="studio-s3-", dir=base_dir))
        self.process: ManagedProcess | None = None

    def start(self, timeout: float = 60.0) -> S3Server:
        return self.resume(timeout)

    def resume(self, timeout: float = 60.0) -> S3Server:
        """Start (again, after `halt`). moto keeps objects in memory: a restart starts empty."""
        self.process = ManagedProcess(
            "s3",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            log_path=self.dir / "s3.log",
        ).start()
        wait_until(
            f"S3 server on port {self.port}",
            lambda: http_ok(f"{self.endpoint_url}/moto-api/"),
            timeout,
            self.process,
        )
        return self

    def halt(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def stop(self) -> None:
        self.halt()
