"""Watching what the session's gateway publishes: a private queue bound to `studio.predictions`, so a test sees
exactly the events it caused without taking messages from the persister; and signed callbacks to post."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import httpx

from common.settings import Settings
from common.topology import EXCHANGE
from tests.helpers import WEBHOOK_SECRET, eventually, signed_callback


def new_id() -> str:
    return f"pred_{uuid.uuid4().hex[:16]}"


class Events:
    """Every event the gateway publishes while a test runs, by prediction id."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue) -> None:
        self.queue = queue
        self.seen: dict[str, list[aio_pika.abc.AbstractIncomingMessage]] = {}

    async def wait_for(self, prediction_id: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        async def arrived() -> bool:
            while (message := await self.queue.get(no_ack=True, fail=False)) is not None:
                self.seen.setdefault(json.loads(message.body)["predictionId"], []).append(message)
            return len(self.seen.get(prediction_id, [])) >= count

        await eventually(f"{count} event(s) for {prediction_id}", arrived, timeout, interval=0.02)
        return [json.loads(m.body) for m in self.seen[prediction_id]]

    def messages(self, prediction_id: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        return self.seen.get(prediction_id, [])


@asynccontextmanager
async def published_events(settings: Settings) -> AsyncIterator[Events]:
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    exchange = await channel.get_exchange(EXCHANGE)  # declared by the gateway, checked passively here
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, "prediction.#")
    yield Events(queue)
    await connection.close()


async def post(http: httpx.AsyncClient, url: str, payload: Any, secret: str = WEBHOOK_SECRET) -> httpx.Response:
    body, headers = signed_callback(payload, secret)
    return await http.post(f"{url}/api/webhooks", content=body, headers=headers)
