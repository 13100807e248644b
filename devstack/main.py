"""`python -m devstack`: the whole of Studio on this machine, in the foreground, until Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from common import log as logs
from common.settings import Settings, SettingsError
from devstack.processes import StartError
from devstack.stack import Stack, simulator_env
from devstack.tokens import issue_token

logger = logging.getLogger("devstack")

DEV_JWT_SECRET = "studio-dev-secret-change-me-0123456789"
DEMO_USER = "demo-user"
REAL_SKYTELLS = "api.skytells.ai"


def _uses_real_skytells(environ: os._Environ[str] | dict[str, str]) -> bool:
    return bool(environ.get("SKYTELLS_API_KEY")) and REAL_SKYTELLS in environ.get("SKYTELLS_BASE_URL", "")


def build_env(environ: os._Environ[str] | dict[str, str]) -> tuple[dict[str, str], bool]:
    env = dict(environ)
    env.setdefault("AUTH_JWT_SECRET", DEV_JWT_SECRET)
    simulated = not _uses_real_skytells(environ)
    if simulated:
        env.update(simulator_env(environ))
    return env, simulated


def _banner(settings: Settings, env: dict[str, str], simulated: bool) -> str:
    token = issue_token(settings.auth_jwt_secret, DEMO_USER, ttl_s=7 * 86400)
    api = f"http://127.0.0.1:{settings.api_port}"
    skytells = f"Skytells simulator  {env['SKYTELLS_BASE_URL']}" if simulated else "Skytells (real)"
    return f"""
Studio is running.

  API                 {api}
  webhook gateway     http://127.0.0.1:{settings.webhook_port}/api/webhooks
  persister           http://127.0.0.1:{settings.persister_port}/metrics
  {skytells}
  S3                  {settings.s3_endpoint_url}/{settings.s3_bucket}

Bearer token for user '{DEMO_USER}' (valid 7 days):

  export TOKEN={token}

Generate an image, then ask for it until it is 'succeeded':

  curl -s -X POST {api}/api/generate -H "Authorization: Bearer $TOKEN" \\
       -H 'Content-Type: application/json' -d '{{"prompt": "a lighthouse at dawn"}}'
  curl -s {api}/api/predictions/<id> -H "Authorization: Bearer $TOKEN"

Ctrl-C stops everything started here.
"""


def main() -> None:
    env, simulated = build_env(os.environ)
    try:
        settings = Settings.from_env(env, required=("AUTH_JWT_SECRET",))
    except SettingsError as exc:
        sys.exit(str(exc))
    logs.configure("devstack", settings.log_level)
    work_dir = Path(tempfile.mkdtemp(prefix="studio-devstack-"))
    stack = Stack(env, work_dir)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start_infrastructure()
        if simulated:
            stack.start_simulator()
        for name in ("api", "webhook", "persister"):
            stack.start_service(name)
        sys.stdout.write(_banner(settings, env, simulated) + f"\nLogs: {work_dir}/logs\n")
        sys.stdout.flush()
        while not stopping.wait(1.0):
            for label, process in stack.processes.items():
                if process.exited:
                    raise StartError(f"{label} exited with code {process.returncode}:\n{process.tail()}")
    except StartError as exc:
        logger.error("%s", exc)
        stack.stop()
        sys.exit(1)
    finally:
        stack.stop()
