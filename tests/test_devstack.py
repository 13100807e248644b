"""The local stack (`python -m devstack`) and its supervisor: what exits is started again, Ctrl-C leaves nothing
behind, everything listens on loopback with a fresh JWT secret, and data survives outages and restarts."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import aiormq
import asyncpg
import httpx
import jwt
import pytest

from devstack.environment import loopback_env
from devstack.processes import ROOT, ManagedProcess, free_port, http_ok
from devstack.stack import Stack
from devstack.supervisor import RESTART_FIRST_S, Supervisor
from tests.helpers import eventually

OLD_FIXED_SECRET = "studio-dev-secret-change-me-0123456789"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the LISTEN sockets on `port` (IPv4 and IPv6), from /proc/net."""
    found = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def service_pid(root: int, module: str) -> int | None:
    return next((p for p in descendants(root) if f"-m {module}" in cmdline(p) and alive(p)), None)


async def test_local_stack_supervises_binds_loopback_and_stops_everything(stack, tmp_path):
    ports = {name: free_port() for name in ("API_PORT", "WEBHOOK_PORT", "PERSISTER_PORT", "NOTIFIER_PORT", "SIM_PORT")}
    s3_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("AUTH_JWT_SECRET", "S3_PUBLIC_BASE_URL")}
    env |= {
        "DATABASE_URL": stack.env["DATABASE_URL"],  # the session's servers: this run starts the S3 server only
        "AMQP_URL": stack.env["AMQP_URL"],
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "S3_BUCKET": "studio-devstack-test",
        "PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{ports['WEBHOOK_PORT']}/api/webhooks",
        "DEVSTACK_DATA_DIR": str(tmp_path / "data"),
        "LOG_LEVEL": "INFO",
        **{k: str(v) for k, v in ports.items()},
    }
    out = tmp_path / "devstack.out"
    with out.open("wb") as sink:
        devstack = subprocess.Popen(
            [sys.executable, "-m", "devstack"], env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    api = f"http://127.0.0.1:{ports['API_PORT']}"
    seen: set[int] = set()
    try:
        await eventually("the banner", lambda: "Studio is running." in out.read_text(), timeout=240)
        text = out.read_text()
        seen |= descendants(devstack.pid)

        # The page's URL carries the token; it works, and a token from the old fixed secret does not.
        token = re.search(rf"{re.escape(api)}/#token=(\S+)", text)
        assert token is not None, text
        assert f"Data                {tmp_path / 'data'}" in text
        async with httpx.AsyncClient(timeout=30) as http:
            me = await http.get(f"{api}/api/generations", headers={"Authorization": f"Bearer {token[1]}"})
            assert me.status_code == 200, me.text
            forged = jwt.encode({"sub": "demo-user", "exp": int(time.time()) + 60}, OLD_FIXED_SECRET, "HS256")
            refused = await http.get(f"{api}/api/generations", headers={"Authorization": f"Bearer {forged}"})
            assert refused.status_code == 401

        for port in [*ports.values(), s3_port]:
            assert listening_addresses(port) == {"0100007F"}, port  # 127.0.0.1, and nothing else

        # A service killed, or stopped by someone else, is started again and becomes ready.
        for module, port_var, signum in (
            ("services.persister", "PERSISTER_PORT", signal.SIGKILL),
            ("services.notifier", "NOTIFIER_PORT", signal.SIGKILL),
            ("services.api", "API_PORT", signal.SIGTERM),
        ):
            before = service_pid(devstack.pid, module)
            assert before is not None
            os.kill(before, signum)
            ready = f"http://127.0.0.1:{ports[port_var]}/readyz"

            def back(module: str = module, before: int = before, ready: str = ready) -> bool:
                now = service_pid(devstack.pid, module)
                return now is not None and now != before and http_ok(ready)

            await eventually(f"{module} restarted and ready", back, timeout=120)
            seen |= descendants(devstack.pid)
        assert "restarting in" in out.read_text() or any(
            "restarting in" in p.read_text() for p in (tmp_path / "data" / "logs").glob("*.log")
        )
    finally:
        devstack.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(devstack.wait, 180)
    assert code == 0, out.read_text()[-3000:]
    left = sorted(p for p in seen if alive(p))
    assert left == [], [cmdline(p) for p in left]
    assert (tmp_path / "data" / "s3" / "state" / "studio-devstack-test" / "index.json").exists()


async def test_replicas_are_killed_and_restarted_through_the_stack_api(stack, tmp_path):
    replicas = Stack(stack.env, tmp_path)
    try:
        ports = [free_port(), free_port()]
        labels = replicas.start_replicas("webhook", [{"WEBHOOK_PORT": str(p)} for p in ports])
        assert labels == ["webhook-1", "webhook-2"]
        first = replicas.supervisor.process("webhook-2").pid
        replicas.kill("webhook-2", signal.SIGKILL)

        def back() -> bool:
            process = replicas.supervisor.process("webhook-2")
            return process.pid != first and not process.exited and http_ok(f"http://127.0.0.1:{ports[1]}/readyz")

        await eventually("webhook-2 back", back, timeout=90)
        assert replicas.supervisor.restarts("webhook-2") == 1
        assert replicas.supervisor.restarts("webhook-1") == 0
        assert http_ok(f"http://127.0.0.1:{ports[0]}/readyz")
    finally:
        replicas.stop()
    assert not any(http_ok(f"http://127.0.0.1:{p}/healthz") for p in ports)


async def test_a_crash_loop_backs_off(tmp_path):
    starts: list[float] = []

    def spawn() -> ManagedProcess:
        starts.append(time.monotonic())
        argv = [sys.executable, "-c", "raise SystemExit(3)"]
        return ManagedProcess("crasher", argv, log_path=tmp_path / "crasher.log").start()

    supervisor = Supervisor()
    try:
        supervisor.add("crasher", spawn)
        await eventually("three restarts", lambda: len(starts) >= 4, timeout=60)
    finally:
        supervisor.stop()
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    # Each wait at least doubles the one before (exit detection adds a little to each, never takes away).
    assert gaps[0] >= RESTART_FIRST_S and gaps[1] >= 2 * RESTART_FIRST_S and gaps[2] >= 4 * RESTART_FIRST_S


async def test_data_dir_keeps_database_broker_and_bucket_across_outages_and_runs(tmp_path):
    # Public outputs: the bucket's policy is part of what must survive (anonymous reads below depend on it).
    env = loopback_env(S3_BUCKET="studio-kept", S3_OUTPUT_ACCESS="public")
    data = tmp_path / "data"
    first = Stack(env, tmp_path / "run1", data)
    try:
        await asyncio.to_thread(first.start_infrastructure)
        settings = first.settings
        conn = await asyncpg.connect(settings.database_url)
        await conn.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('before')")
        await conn.close()
        broker = await aio_pika.connect(settings.amqp_url)
        channel = await broker.channel()
        await channel.declare_queue("kept", durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(
            aio_pika.Message(b"kept message", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "kept"
        )
        await broker.close()
        async with httpx.AsyncClient(timeout=30) as http:
            s3 = f"{settings.s3_endpoint_url}/{settings.s3_bucket}/generations/kept.png"
            stored = await http.put(s3, content=b"\x89PNG kept", headers={"Content-Type": "image/png"})
            assert stored.status_code == 200, stored.text

            # Each down the hard way, then back with its data. RabbitMQ is left out here: after a SIGKILL, a
            # quorum queue in a kept data folder did not answer a get for over a minute (an open problem, see
            # docs/failure-model.md); the second run below restarts it gently with the same data.
            for server in ("postgres", "s3"):
                await asyncio.to_thread(first.outage, server)
                await asyncio.to_thread(first.recover, server)
            await _assert_kept(settings, http, s3)
    finally:
        await asyncio.to_thread(first.stop)

    second = Stack(env, tmp_path / "run2", data)
    try:
        await asyncio.to_thread(second.start_infrastructure)
        async with httpx.AsyncClient(timeout=30) as http:
            await _assert_kept(second.settings, http, s3)
    finally:
        await asyncio.to_thread(second.stop)
        # pytest's folders are private: data was kept where the servers' users can reach it; clean it up
        for moved in data.glob("*/WHERE.txt"):
            shutil.rmtree(moved.read_text().split(" are in ", 1)[1].strip(), ignore_errors=True)


async def _assert_kept(settings, http, s3_url) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT note FROM kept") == "before"
    finally:
        await conn.close()
    broker = await aio_pika.connect(settings.amqp_url)
    try:

        async def kept_message() -> aio_pika.abc.AbstractIncomingMessage | None:
            # A quorum queue answers once its log is replayed after a hard kill. A get that times out closes its
            # channel, so each attempt opens its own.
            channel = await broker.channel()
            queue = await channel.declare_queue("kept", durable=True, arguments={"x-queue-type": "quorum"})
            try:
                return await queue.get(no_ack=False, fail=False, timeout=5)
            except (TimeoutError, aiormq.exceptions.AMQPError):
                return None

        message = await eventually("the kept message", kept_message, timeout=90)
        assert message.body == b"kept message"
        await message.nack(requeue=True)
    finally:
        await broker.close()
    answer = await http.get(s3_url)  # anonymous: the public-read policy came back too
    assert answer.status_code == 200 and answer.content == b"\x89PNG kept"
    assert answer.headers["content-type"] == "image/png"


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch):
    monkeypatch.delenv("DEVSTACK_DATA_DIR", raising=False)
