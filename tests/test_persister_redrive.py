"""Dead letters a person can deal with: each says why it died, and `redrive` lists, moves back or discards them
by id, leaving every other dead message where it is."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import aio_pika

from common.topology import ATTEMPT_HEADER, QUEUE, event_message
from tests.helpers import eventually
from tests.persister_kit import dead_messages, event_of, insert_generation, sim_prediction, wait_row


async def _redrive(services, *args: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.persister", "redrive", *args],
        env=services.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _line_of(listing: str, message_id: str) -> str:
    [line] = [line for line in listing.splitlines() if line.startswith(message_id)]
    return line


async def test_list_then_move_one_back_and_discard_another(http, urls, services, db, broker, settings):
    # An event for a prediction nobody has, on its last attempt (it dies after one), and a message that is no event.
    prediction = await sim_prediction(http, urls.simulator, "dead then revived")
    event = event_of(prediction)
    await broker.publish_to_queue(QUEUE, event_message(event, {ATTEMPT_HEADER: settings.persister_max_attempts}))
    garbage_id = f"garbage-{uuid.uuid4().hex}"
    await broker.publish_to_queue(QUEUE, aio_pika.Message(b"not an event", message_id=garbage_id))

    async def both_dead() -> bool:
        ids = {json.loads(b).get("eventId") if b.startswith(b"{") else b for b in await dead_messages(broker)}
        return event.event_id in ids and b"not an event" in ids

    await eventually("both messages in the dead-letter queue", both_dead, timeout=30)

    listing = await _redrive(services, "list")

    event_line = _line_of(listing, event.event_id)
    assert f"no generation has prediction id {prediction['id']}" in event_line
    assert event_line.split()[1] == str(settings.persister_max_attempts)  # attempts
    assert event_line.split()[2].endswith("s")  # age: seconds since the first failure
    assert "undecodable event" in _line_of(listing, garbage_id)

    assert (await _redrive(services, "discard", garbage_id)).startswith("discarded 1 dead messages")
    gid = await insert_generation(db, prediction["id"])  # the cause is fixed: the generation exists now
    moved = await _redrive(services, "move", event.event_id, "no-such-id")
    assert moved.startswith("moved 1 dead messages") and "not found: no-such-id" in moved

    assert (await wait_row(db, gid, timeout=30))["status"] == "succeeded"
    after = await _redrive(services, "list")
    assert event.event_id not in after and garbage_id not in after


async def test_move_and_discard_need_ids_or_all(services):
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.persister", "redrive", "discard"],
        env=services.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "say which messages" in done.stderr
