"""The gateway is not ready while RabbitMQ blocks its connection (a memory or disk alarm): a load balancer then
sends callbacks elsewhere instead of letting each wait 5 s for its 503. The alarm is raised on the session's
broker with `rabbitmqctl`, and cleared again whatever happens."""

from __future__ import annotations

import asyncio
import uuid

from devstack.stack import Stack
from tests.helpers import eventually, signed_callback
from tests.persister_kit import insert_generation, wait_row


async def _ready(http, webhook: str) -> tuple[int, dict]:
    response = await http.get(f"{webhook}/readyz")
    return response.status_code, response.json()


async def test_readyz_names_rabbitmq_while_it_blocks_the_connection(http, urls, services: Stack, db, settings):
    rabbitmq = services.rabbitmq
    assert rabbitmq is not None, "the session must run its own RabbitMQ to raise an alarm on it"
    assert (await _ready(http, urls.webhook))[0] == 200
    # RabbitMQ blocks a connection (and says so) once it publishes under the alarm: one callback does.
    prediction_id = f"pred_blocked_{uuid.uuid4().hex}"
    gid = await insert_generation(db, prediction_id)
    body, headers = signed_callback({"id": prediction_id, "status": "started"}, settings.skytells_webhook_secrets[0])
    try:
        await asyncio.to_thread(rabbitmq.ctl, "set_vm_memory_high_watermark", "0")
        callback = await http.post(f"{urls.webhook}/api/webhooks", content=body, headers=headers)
        assert callback.status_code == 503, callback.text  # not confirmed while blocked: Skytells retries

        async def blocked() -> tuple[int, dict] | None:
            status, body = await _ready(http, urls.webhook)
            return (status, body) if status == 503 else None

        status, body = await eventually("the gateway to report the blocked connection", blocked, timeout=30)
        assert "broker" in body["failing"] and "blocked" in body["failing"]["broker"], body
    finally:
        await asyncio.to_thread(rabbitmq.ctl, "set_vm_memory_high_watermark", "0.4")

    async def ready_again() -> bool:
        return (await _ready(http, urls.webhook))[0] == 200

    await eventually("the gateway to be ready once the alarm clears", ready_again, timeout=30)
    assert (await wait_row(db, gid, statuses=("processing",), timeout=30))["status"] == "processing"
