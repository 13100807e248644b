"""What the persister tests share: predictions made at the simulator without callbacks, generation rows written
straight into PostgreSQL, events published straight to RabbitMQ, and waits on rows, queues and S3 objects.

Driving the persister this way (rather than through the API and the gateway) lets a test decide exactly which
events arrive, how often and in which order.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

import asyncpg
import httpx

from common.broker import Broker
from common.events import PredictionEvent
from common.predictions import TERMINAL, parse_prediction
from common.settings import Settings
from common.storage import open_s3
from tests.helpers import eventually

SIM_KEY = {"x-api-key": "sim-key"}


async def sim_prediction(
    http: httpx.AsyncClient, sim_url: str, prompt: str, timeout: float = 60, fetch: bool = True
) -> dict[str, Any]:
    """A prediction the simulator completes without calling anyone back; returns its final view (with
    `fetch=False`, only the simulator's record of it: its own `GET` is then left untouched)."""
    created = await http.post(
        f"{sim_url}/v1/predictions",
        json={"model": "truefusion-pro", "input": {"prompt": f"{prompt} #sim:delay=0.05"}},
        headers=SIM_KEY,
    )
    assert created.status_code == 201, created.text
    pid = created.json()["id"]

    async def ended() -> dict[str, Any] | None:
        view = (await http.get(f"{sim_url}/_sim/predictions")).json()
        mine: dict[str, Any] = next(p for p in view if p["id"] == pid)
        return mine if mine["status"] in ("succeeded", "failed", "cancelled") else None

    mine = await eventually(f"{pid} to end at the simulator", ended, timeout, interval=0.05)
    if not fetch:
        return mine
    answer = await http.get(f"{sim_url}/v1/predictions/{pid}", headers=SIM_KEY)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["status"] in ("succeeded", "failed", "cancelled"), body
    return body


async def sim_record(http: httpx.AsyncClient, sim_url: str, prediction_id: str) -> dict[str, Any]:
    view = (await http.get(f"{sim_url}/_sim/predictions")).json()
    record: dict[str, Any] = next(p for p in view if p["id"] == prediction_id)
    return record


def event_of(prediction: dict[str, Any]) -> PredictionEvent:
    """The event the gateway would publish for this prediction's callback."""
    return PredictionEvent.from_prediction(parse_prediction(prediction), "webhook")


def processing_event(prediction_id: str) -> PredictionEvent:
    return PredictionEvent.from_prediction(
        parse_prediction({"id": prediction_id, "status": "started", "output": None}), "webhook"
    )


async def insert_generation(
    conn: asyncpg.Connection, prediction_id: str | None, *, age_s: float = 0, status: str = "queued"
) -> uuid.UUID:
    gid = uuid.uuid4()
    await conn.execute(
        """INSERT INTO generations (id, user_id, model, prompt, prediction_id, status, created_at, completed_at)
           VALUES ($1, $2, 'truefusion-pro', 'persister test', $3, $4, now() - make_interval(secs => $5),
                   CASE WHEN $4 IN ('succeeded', 'failed', 'canceled') THEN now() END)""",
        gid,
        f"user-{gid.hex[:8]}",
        prediction_id,
        status,
        float(age_s),
    )
    return gid


async def row(conn: asyncpg.Connection, gid: uuid.UUID) -> asyncpg.Record:
    record = await conn.fetchrow("SELECT * FROM generations WHERE id = $1", gid)
    assert record is not None
    return record


async def wait_row(
    conn: asyncpg.Connection, gid: uuid.UUID, statuses: Collection[str] = TERMINAL, timeout: float = 60
) -> asyncpg.Record:
    async def reached() -> asyncpg.Record | None:
        record = await row(conn, gid)
        return record if record["status"] in statuses else None

    return await eventually(f"generation {gid} to reach {sorted(statuses)}", reached, timeout, interval=0.05)


async def publish(broker: Broker, event: PredictionEvent, times: int = 1) -> None:
    for _ in range(times):
        await broker.publish_event(event)


async def stored_objects(settings: Settings, gid: uuid.UUID) -> dict[str, tuple[bytes, str]]:
    """key -> (bytes, content type) of every object stored for a generation."""
    found: dict[str, tuple[bytes, str]] = {}
    async with open_s3(settings) as s3:
        listing = await s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"generations/{gid}")
        for item in listing.get("Contents", ()):
            obj = await s3.get_object(Bucket=settings.s3_bucket, Key=item["Key"])
            async with obj["Body"] as body:
                found[item["Key"]] = (await body.read(), obj["ContentType"])
    return found


async def cdn_bytes(http: httpx.AsyncClient, sim_url: str, prediction_id: str, index: int = 0) -> bytes:
    response = await http.get(f"{sim_url}/cdn/{prediction_id}/{index}.png")
    assert response.status_code == 200
    return response.content


async def dead_messages(broker: Broker) -> list[bytes]:
    """Bodies in studio.persister.dead, left there (each is returned unacknowledged)."""
    channel = await broker.connection.channel()
    try:
        queue = await channel.declare_queue("studio.persister.dead", passive=True)
        bodies: list[bytes] = []
        held = []
        while True:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            bodies.append(message.body)
            held.append(message)
        for message in held:
            await message.nack(requeue=True)
        return bodies
    finally:
        await channel.close()
