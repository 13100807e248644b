"""`python -m devstack`: the whole of Studio on this machine, in the foreground, until Ctrl-C or SIGTERM.

Safe by default: every process it starts listens on 127.0.0.1 only, and unless `AUTH_JWT_SECRET` is given the
API gets a random secret for this run (a token printed here stops working at the next run). It supervises what
it starts (a service or the simulator that exits is started again, see `supervisor.py`). Data (database,
broker, bucket) lives in `DEVSTACK_DATA_DIR` when set, where the next run finds it again, else in a temporary
directory removed at exit. Ctrl-C or SIGTERM stops everything it started, and nothing else.
`DEVSTACK_RABBITMQ_NODES=3` makes its RabbitMQ a three-node cluster and `DEVSTACK_POSTGRES_STANDBY=1` gives its
PostgreSQL a synchronous standby (see `stack.py`).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from common import log as logs
from common.settings import Settings, SettingsError
from devstack.environment import cluster_env, simulator_env
from devstack.processes import StartError
from devstack.stack import SERVICES, Stack
from devstack.tokens import issue_token

logger = logging.getLogger("devstack")

DEMO_USER = "demo-user"
REAL_SKYTELLS = "api.skytells.ai"
LOOPBACK = "127.0.0.1"


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the stack was still starting."""


def _uses_real_skytells(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("SKYTELLS_API_KEY")) and REAL_SKYTELLS in environ.get("SKYTELLS_BASE_URL", "")


def build_env(environ: Mapping[str, str]) -> tuple[dict[str, str], bool]:
    """The environment every started process gets, and whether the simulator stands in for Skytells."""
    env = dict(environ)
    if not env.get("AUTH_JWT_SECRET"):
        env["AUTH_JWT_SECRET"] = secrets.token_urlsafe(48)  # 64 characters: a fresh key per run
    env["BIND_HOST"] = env["SIM_HOST"] = LOOPBACK  # nothing of a development stack answers the network
    simulated = not _uses_real_skytells(environ)
    if simulated:
        env.update(simulator_env(environ))
    return env, simulated


def banner(settings: Settings, env: Mapping[str, str], simulated: bool, data: str, logs_dir: Path) -> str:
    token = issue_token(settings.auth_jwt_secret, DEMO_USER, ttl_s=7 * 86400)
    api = f"http://{LOOPBACK}:{settings.api_port}"
    skytells = f"Skytells simulator  {env['SKYTELLS_BASE_URL']}" if simulated else "Skytells (real)"
    return f"""
Studio is running.

  Studio's page       {api}/#token={token}
  API                 {api}
  webhook gateway     http://{LOOPBACK}:{settings.webhook_port}/api/webhooks
  persister           http://{LOOPBACK}:{settings.persister_port}/metrics
  notifier            http://{LOOPBACK}:{settings.notifier_port}/metrics
  {skytells}
  S3                  {settings.s3_endpoint_url}/{settings.s3_bucket}

  Data                {data}
  Logs                {logs_dir}

Bearer token for user '{DEMO_USER}' (valid 7 days, or until this stack stops if its secret was made for it):

  export TOKEN={token}

Generate an image, then ask for it until it is 'succeeded':

  curl -s -X POST {api}/api/generate -H "Authorization: Bearer $TOKEN" \\
       -H 'Content-Type: application/json' -d '{{"prompt": "a lighthouse at dawn"}}'
  curl -s {api}/api/predictions/<id> -H "Authorization: Bearer $TOKEN"

The models and their options, and two 512 x 768 JPEGs of one seed:

  curl -s {api}/api/models -H "Authorization: Bearer $TOKEN"
  curl -s -X POST {api}/api/generate -H "Authorization: Bearer $TOKEN" \\
       -H 'Content-Type: application/json' -d '{{"prompt": "two harbours", "input": {{"width": 512,
       "height": 768, "num_outputs": 2, "seed": 7, "output_format": "jpeg"}}}}'

A service that exits is started again. Ctrl-C stops everything started here.
"""


def main() -> None:
    env, simulated = build_env(os.environ)
    try:
        env = cluster_env(env)  # every RabbitMQ node and PostgreSQL server asked for, named in the URLs
        settings = Settings.from_env(env, required=("AUTH_JWT_SECRET",))
    except (SettingsError, StartError) as exc:
        sys.exit(str(exc))
    logs.configure("devstack", settings.log_level)
    kept = env.get("DEVSTACK_DATA_DIR", "")
    data_dir = Path(kept).resolve() if kept else None
    work_dir = data_dir or Path(tempfile.mkdtemp(prefix="studio-devstack-"))
    stack = Stack(env, work_dir, data_dir)
    started = threading.Event()
    stopping = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        if not started.is_set():
            raise Interrupted  # abort a start-up in progress; `finally` stops what was started

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        stack.start_infrastructure()
        if simulated:
            stack.start_simulator(supervise=True)
        for name in SERVICES:
            stack.start_service(name, supervise=True)
        started.set()
        where = f"{data_dir} (kept across runs)" if data_dir else f"{work_dir} (temporary, removed at exit)"
        sys.stdout.write(banner(settings, env, simulated, where, work_dir / "logs"))
        sys.stdout.flush()
        while not stopping.wait(1.0):
            pass
    except Interrupted:
        pass
    except StartError as exc:
        logger.error("%s", exc)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stopping short
        stack.stop()
        if data_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    sys.exit(code)
