"""A persister started while RabbitMQ is down comes up and says why it is not ready, rather than exiting (and
being restarted in a loop by its supervisor); it starts consuming once RabbitMQ answers."""

from __future__ import annotations

import asyncio

import httpx

from devstack.processes import free_port
from devstack.rabbitmq import RabbitMQ
from tests.helpers import eventually


async def _status(url: str) -> tuple[int, dict] | None:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(url)
            return response.status_code, response.json()
    except httpx.TransportError:
        return None


async def test_persister_starts_without_rabbitmq_and_consumes_once_it_answers(stack):
    amqp_port = free_port()
    amqp_url = f"amqp://guest:guest@127.0.0.1:{amqp_port}/"
    port = free_port()
    env = {"AMQP_URL": amqp_url, "PERSISTER_PORT": str(port)}
    process = stack.start_service("persister", env=env, label=f"persister-{port}", wait=False)
    base = f"http://127.0.0.1:{port}"
    rabbit: RabbitMQ | None = None
    try:
        health = await eventually("/healthz without a broker", lambda: _status(f"{base}/healthz"))
        await asyncio.sleep(3)  # longer than a failed first connection attempt takes
        assert not process.exited, process.tail()
        ready = await _status(f"{base}/readyz")

        rabbit = RabbitMQ(amqp_url)
        await asyncio.to_thread(rabbit.start)

        async def ready_now() -> bool:
            answer = await _status(f"{base}/readyz")
            return answer is not None and answer[0] == 200

        await eventually("/readyz once RabbitMQ answers", ready_now, timeout=60)
    finally:
        process.stop()
        if rabbit is not None:
            await asyncio.to_thread(rabbit.stop)

    assert health[0] == 200
    assert ready is not None and ready[0] == 503
    assert {"broker", "consumer"} <= set(ready[1]["failing"])
