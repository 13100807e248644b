"""The balance after the soak: Studio's generations, objects and queues against the simulator's truth.

Findings fall in three columns:
- lost: a generation that never ended, a succeeded one whose object is missing, a prediction the simulator
  made that no generation holds (a paid image nobody will see), an accepted id the database does not know;
- wrong: a terminal status other than the simulator's, an object whose bytes differ, a user still charged for
  an unfinished generation, a dead letter, an answer 5xx other than 503 with Retry-After, a prediction held by
  another generation than the one whose reference its callback URL carries;
- extra: an object under `generations/` no generation points at (a deleted generation's included), a
  prediction id the simulator never made, a second prediction made for one generation (a create repeated after
  an unclear answer, paid twice).
A generation its user deleted must be gone with its objects (a row left is wrong); its prediction is then held
by it through the generation reference Skytells lists with it. Webhooks have their own part
(`chaos/deliveries.py`), in the same three columns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import asyncpg
import httpx

from chaos import deliveries
from chaos.driver import Record
from chaos.receivers import Receivers
from common.broker import node_urls
from common.predictions import TERMINAL, Status, from_skytells
from common.references import generation_of_webhook_url
from common.settings import Settings
from common.storage import PREFIX, open_s3
from common.topology import DEAD_QUEUE, QUEUE, RetrySchedule, delay_queue_name

ROWS = """
SELECT id::text, user_id, prediction_id, status, output_keys, error FROM generations
"""
# What the quota counts against each user (the same condition as the API's quota check).
CHARGED = """
SELECT user_id, count(*) AS active FROM generations WHERE status IN ('queued', 'processing') GROUP BY user_id
"""


@dataclass
class Balance:
    outcomes: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    webhooks: dict[str, int] = field(default_factory=dict)  # deliveries by event and status, requests by answer


async def unsettled(settings: Settings) -> int:
    """Generations still unfinished, events still queued or waiting for a retry, and webhook deliveries still
    pending: 0 once the soak has drained."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM generations WHERE status IN ('queued', 'processing')")
        count += await deliveries.pending(conn)
    finally:
        await conn.close()
    queues = [QUEUE, *(delay_queue_name(d) for d in RetrySchedule.from_settings(settings).all)]
    return count + sum((await _depths(settings.amqp_url, queues)).values())


async def _depths(amqp_url: str, queues: list[str]) -> dict[str, int]:
    connection = await aio_pika.connect(node_urls(amqp_url)[0])  # on a cluster, any node tells
    async with connection:
        channel = await connection.channel()
        depths = {}
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = int(queue.declaration_result.message_count or 0)
        return depths


async def simulator_truth(client: httpx.AsyncClient, simulator: str) -> dict[str, dict[str, Any]]:
    body = (await client.get(f"{simulator}/_sim/predictions", timeout=120)).json()
    items: list[dict[str, Any]] = body
    return {item["id"]: item for item in items}


async def _objects(settings: Settings) -> dict[str, str]:
    """Every object under `generations/` with the sha256 of its bytes."""
    found: dict[str, str] = {}
    async with open_s3(settings) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=settings.s3_bucket, Prefix=PREFIX):
            for item in page.get("Contents", []):
                obj = await s3.get_object(Bucket=settings.s3_bucket, Key=item["Key"])
                async with obj["Body"] as stream:
                    found[item["Key"]] = hashlib.sha256(await stream.read()).hexdigest()
    return found


def one_prediction_each(balance: Balance, truth: dict[str, dict[str, Any]], holders: dict[str, str]) -> None:
    """Every prediction belongs to exactly one generation: the one its callback URL names, which holds it and no
    other. A create answered unclearly (a 504, a cut connection) and repeated with its Idempotency-Key must
    return the waiting generation, never make a second prediction."""
    made: dict[str, list[str]] = {}
    for prediction_id, prediction in truth.items():
        reference = generation_of_webhook_url(prediction["webhook"] or "")
        if reference is None:
            balance.extra.append(f"prediction {prediction_id} names no generation in its callback URL")
            continue
        made.setdefault(reference, []).append(prediction_id)
        holder = holders.get(prediction_id)
        if holder is not None and holder != reference:
            balance.wrong.append(f"prediction {prediction_id} of generation {reference} is held by {holder}")
    for gid, predictions in made.items():
        if len(predictions) > 1:
            balance.extra.append(f"generation {gid} made {len(predictions)} predictions: {', '.join(predictions)}")


async def check(
    settings: Settings, client: httpx.AsyncClient, simulator: str, record: Record, receivers: Receivers
) -> Balance:
    """`settings` reach the servers directly."""
    balance = Balance()
    truth = await simulator_truth(client, simulator)
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(ROWS)
        charged = await conn.fetch(CHARGED)
        delivery_rows = await conn.fetch(deliveries.ROWS)
    finally:
        await conn.close()
    objects = await _objects(settings)
    expected_keys: set[str] = set()
    held: set[str] = set()
    known = {row["id"] for row in rows}
    for row in rows:
        status, gid = row["status"], row["id"]
        balance.outcomes[status] = balance.outcomes.get(status, 0) + 1
        if status not in TERMINAL:
            balance.lost.append(f"generation {gid} never ended ({status})")
            continue
        prediction = truth.get(row["prediction_id"]) if row["prediction_id"] else None
        if row["prediction_id"] is None:
            if status == Status.SUCCEEDED:
                balance.wrong.append(f"generation {gid} succeeded without a prediction")
            continue
        held.add(row["prediction_id"])
        if prediction is None:
            balance.extra.append(f"generation {gid} holds prediction {row['prediction_id']} the simulator never made")
            continue
        expected = from_skytells(prediction["status"])
        if status != expected:
            balance.wrong.append(
                f"generation {gid} is {status}, the simulator says {prediction['status']}: {row['error']}"
            )
            continue
        if status != Status.SUCCEEDED:
            continue
        outputs = prediction["outputs"]
        if len(row["output_keys"]) != len(outputs):
            balance.wrong.append(
                f"generation {gid} has {len(row['output_keys'])} outputs, the simulator made {len(outputs)}"
            )
        for key, output in zip(row["output_keys"], outputs, strict=False):
            expected_keys.add(key)
            if key not in objects:
                balance.lost.append(f"generation {gid}: object {key} is missing")
            elif objects[key] != output["sha256"]:
                balance.wrong.append(f"generation {gid}: object {key} does not hold the simulator's bytes")
    for gid in record.deleted & known:
        balance.wrong.append(f"generation {gid} was deleted but is still in the database")
    for prediction_id in truth.keys() - held:
        if generation_of_webhook_url(truth[prediction_id]["webhook"]) in record.deleted:
            continue  # made for a generation its user deleted since
        balance.lost.append(f"prediction {prediction_id} belongs to no generation ({truth[prediction_id]['webhook']})")
    one_prediction_each(balance, truth, {row["prediction_id"]: row["id"] for row in rows if row["prediction_id"]})
    for gid in record.accepted.keys() - known - record.deleted:
        balance.lost.append(f"generation {gid} was accepted but is not in the database")
    for key in objects.keys() - expected_keys:
        owner = key.removeprefix(PREFIX)[:36]
        why = "of a deleted generation" if owner in record.deleted else "belongs to no succeeded generation"
        balance.extra.append(f"object {key} {why}")
    for row in charged:
        balance.wrong.append(f"user {row['user_id']} still has {row['active']} unfinished generations counted")
    dead = (await _depths(settings.amqp_url, [DEAD_QUEUE]))[DEAD_QUEUE]
    balance.wrong += [f"dead letter #{n + 1} in {DEAD_QUEUE}" for n in range(dead)]
    balance.wrong += [f"API answered {line}" for line in record.bad]
    balance.webhooks = dict(
        deliveries.check(delivery_rows, receivers, record, balance.lost, balance.wrong, balance.extra)
    )
    for prediction in truth.values():
        for callback in prediction["callbacks"]:
            for status in callback.get("unexpected", []):
                balance.wrong.append(f"gateway answered {status} to a callback for {prediction['id']}")
    return balance
