"""Server-sent event streams: per generation (current state first, one event per change, closed after the
terminal one) and per user (unfinished generations first, then every change of that user's only), keep-alives,
`Last-Event-ID`, the database re-read that makes up for a lost update, and resources freed when a client goes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import aiormq
import httpx
import pytest

from common.broker import Broker
from common.predictions import TERMINAL
from devstack.processes import ManagedProcess, free_port
from devstack.stack import Stack
from studio_cli.sse import Event, read_events
from tests.helpers import bearer, eventually, metric, metrics_of, wait_for_status

WATCHERS = "studio_api_live_watchers"


async def _create(http: httpx.AsyncClient, api: str, auth: dict[str, str], prompt: str) -> dict[str, Any]:
    response = await http.post(f"{api}/api/generate", json={"prompt": prompt}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


async def _collect(response: httpx.Response, events: list[Event], until: Any = None) -> None:
    async for event in read_events(response):
        events.append(event)
        if until is not None and until(events):
            return


async def _watchers(http: httpx.AsyncClient, api: str) -> float:
    return metric(await metrics_of(http, api), WATCHERS)


async def test_generation_stream_sends_current_state_then_each_change_and_closes_after_the_end(http, urls, auth):
    created = await _create(http, urls.api, auth, "a slow sunrise #sim:delay=1")
    events: list[Event] = []

    async with http.stream("GET", f"{urls.api}/api/predictions/{created['id']}/events", headers=auth) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        await asyncio.wait_for(_collect(response, events), 30)  # returns only because the server closes it

    bodies = [event.json() for event in events]
    assert all(event.event == "generation" for event in events)
    assert {body["id"] for body in bodies} == {created["id"]}
    assert bodies[0]["status"] in ("queued", "processing")
    assert bodies[-1]["status"] == "succeeded" and bodies[-1]["outputUrl"]
    seen = {body["status"] for body in bodies}
    assert [body["status"] for body in bodies[:-1]] == [s for s in ("queued", "processing") if s in seen]
    ids = [int(event.id or "") for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_generation_stream_of_a_finished_generation_is_one_event(http, urls, auth):
    created = await _create(http, urls.api, auth, "quick #sim:delay=0.1")
    done = await wait_for_status(http, urls.api, created["id"], auth)
    events: list[Event] = []

    async with http.stream("GET", f"{urls.api}/api/predictions/{created['id']}/events", headers=auth) as response:
        await asyncio.wait_for(_collect(response, events), 10)

    assert [event.json() for event in events] == [done]


async def test_generation_stream_answers_404_as_get_does(http, urls, auth):
    created = await _create(http, urls.api, auth, "mine #sim:delay=0.1")
    stranger = bearer(f"other-{uuid.uuid4().hex}")

    for headers, path in (
        (stranger, created["id"]),
        (auth, str(uuid.uuid4())),
        (auth, "not-a-uuid"),
    ):
        response = await http.get(f"{urls.api}/api/predictions/{path}/events", headers=headers)
        assert response.status_code == 404, path
        assert response.json() == {"error": "Not found"}
    assert (await http.get(f"{urls.api}/api/predictions/{created['id']}/events")).status_code == 401


async def test_user_stream_opens_with_unfinished_generations_then_every_change_and_no_one_elses(http, urls, auth):
    waiting = await _create(http, urls.api, auth, "a long night #sim:delay=60")
    other = bearer(f"other-{uuid.uuid4().hex}")
    events: list[Event] = []

    def finished(seen: list[Event]) -> bool:
        final = {e.json()["id"]: e.json()["status"] for e in seen}
        return final.get(waiting["id"]) == "canceled" and final.get(quick.get("id", "")) == "succeeded"

    quick: dict[str, Any] = {}
    async with http.stream("GET", f"{urls.api}/api/generations/events", headers=auth) as response:
        assert response.status_code == 200
        reading = asyncio.create_task(_collect(response, events, finished))
        await eventually("the opening event", lambda: events)
        theirs = await _create(http, urls.api, other, "not yours #sim:delay=0.1")
        quick.update(await _create(http, urls.api, auth, "a quick one #sim:delay=0.2"))
        cancel = await http.post(f"{urls.api}/api/predictions/{waiting['id']}/cancel", headers=auth)
        assert cancel.status_code == 200
        await asyncio.wait_for(reading, 30)

    bodies = [event.json() for event in events]
    assert bodies[0]["id"] == waiting["id"] and bodies[0]["status"] in ("queued", "processing")
    assert theirs["id"] not in {body["id"] for body in bodies}
    mine = [body["status"] for body in bodies if body["id"] == quick["id"]]
    assert mine[0] in ("queued", "processing") and mine[-1] == "succeeded"
    assert [body["status"] for body in bodies if body["id"] == waiting["id"]][-1] == "canceled"


async def test_idle_stream_gets_a_keep_alive_comment_within_15_seconds(http, urls, auth):
    async with http.stream("GET", f"{urls.api}/api/generations/events", headers=auth) as response:
        lines = response.aiter_lines()
        first = await asyncio.wait_for(anext(lines), 17)

    assert first == ": keep-alive"


async def test_a_terminal_state_whose_update_was_lost_still_reaches_the_stream(http, urls, auth, user_id, db):
    """The change is written straight into the database, so no update message is ever published for it."""
    created = await _create(http, urls.api, auth, "lost news #sim:delay=60")
    events: list[Event] = []

    async with http.stream("GET", f"{urls.api}/api/predictions/{created['id']}/events", headers=auth) as response:
        reading = asyncio.create_task(_collect(response, events))
        await eventually("the first event", lambda: events)
        await db.execute(
            "UPDATE generations SET status = 'failed', error = 'written behind the back', completed_at = now(),"
            " updated_at = now() WHERE id = $1::uuid",
            created["id"],
        )
        await asyncio.wait_for(reading, 5 + 2)  # the re-read runs every 2 s; the promise is 5 s

    assert events[-1].json()["status"] == "failed"
    assert events[-1].json()["error"] == "written behind the back"


async def test_a_client_that_goes_away_frees_its_stream(urls, auth):
    async with httpx.AsyncClient(timeout=30) as probe:
        before = await _watchers(probe, urls.api)
        client = httpx.AsyncClient(timeout=30)
        streams = [client.stream("GET", f"{urls.api}/api/generations/events", headers=auth) for _ in range(3)]
        for stream in streams:
            response = await stream.__aenter__()
            assert response.status_code == 200
        await eventually("three open streams", lambda: _at_least(probe, urls.api, before + 3))
        await client.aclose()  # the connections close without the streams ever ending

        await eventually("the streams freed", lambda: _at_most(probe, urls.api, before), timeout=5)


async def _at_least(http: httpx.AsyncClient, api: str, count: float) -> bool:
    return await _watchers(http, api) >= count


async def _at_most(http: httpx.AsyncClient, api: str, count: float) -> bool:
    return await _watchers(http, api) <= count


async def test_last_event_id_resumes_with_what_changed_while_away(http, urls, auth):
    created = await _create(http, urls.api, auth, "while you were out #sim:delay=1")
    async with http.stream("GET", f"{urls.api}/api/generations/events", headers=auth) as response:
        first = await asyncio.wait_for(anext(read_events(response)), 10)
    assert first.json()["id"] == created["id"] and first.json()["status"] not in TERMINAL
    done = await wait_for_status(http, urls.api, created["id"], auth)

    resumed = {**auth, "Last-Event-ID": first.id or ""}
    async with http.stream("GET", f"{urls.api}/api/generations/events", headers=resumed) as response:
        missed = await asyncio.wait_for(anext(read_events(response)), 10)

    assert missed.json() == done
    assert int(missed.id or "") > int(first.id or "")


@pytest.mark.parametrize("value", ["yesterday", "-5", "1" * 25, "12 34", ""])
async def test_a_last_event_id_that_is_not_ours_is_a_400(http, urls, auth, value):
    for path in ("/api/generations/events", f"/api/predictions/{uuid.uuid4()}/events"):
        response = await http.get(f"{urls.api}{path}", headers={**auth, "Last-Event-ID": value})
        assert response.status_code == 400, (path, value)
        assert "Last-Event-ID" in response.json()["error"]


@pytest.fixture(scope="module")
def second_api(services: Stack) -> Iterator[tuple[str, ManagedProcess]]:
    """Another API replica on the same database and broker."""
    port = free_port()
    process = services.start_service("api", env={"API_PORT": str(port)}, label="api-live-2")
    yield f"http://127.0.0.1:{port}", process
    process.stop()


def _update_queue(process: ManagedProcess) -> str:
    for line in process.log_path.read_text().splitlines():
        if '"receiving live updates"' in line:
            return str(json.loads(line)["queue"])
    raise AssertionError("the replica never said which queue it reads")


async def test_a_change_made_through_one_replica_reaches_a_stream_on_another_through_rabbitmq(
    http, urls, auth, second_api
):
    other, _ = second_api
    received_before = metric(await metrics_of(http, other), "studio_api_live_updates_received_total")
    created = await _create(http, urls.api, auth, "across replicas #sim:delay=60")
    events: list[Event] = []

    async with http.stream("GET", f"{other}/api/predictions/{created['id']}/events", headers=auth) as response:
        reading = asyncio.create_task(_collect(response, events))
        await eventually("the first event", lambda: events)
        cancel = await http.post(f"{urls.api}/api/predictions/{created['id']}/cancel", headers=auth)
        assert cancel.status_code == 200
        await asyncio.wait_for(reading, 10)

    assert events[-1].json()["status"] == "canceled"
    assert metric(await metrics_of(http, other), "studio_api_live_updates_received_total") > received_before


async def test_each_replica_reads_its_own_queue_which_goes_away_with_it(services, settings):
    port = free_port()
    process = services.start_service("api", env={"API_PORT": str(port)}, label="api-live-3")
    queue = await eventually("the replica's queue", lambda: _logged_queue(process))
    broker = await Broker.connect(settings.amqp_url)
    try:
        assert await _queue_exists(broker, queue)
        process.stop()
        await eventually("the queue deleted", lambda: _gone(broker, queue), timeout=10)
    finally:
        await broker.close()


def _logged_queue(process: ManagedProcess) -> str | None:
    try:
        return _update_queue(process)
    except AssertionError:
        return None


async def _queue_exists(broker: Broker, name: str) -> bool:
    """An exclusive queue of another connection answers "locked" to a passive declare; a deleted one "not found"."""
    channel = await broker.connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
        return True
    except aiormq.exceptions.ChannelLockedResource:
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


async def _gone(broker: Broker, name: str) -> bool:
    return not await _queue_exists(broker, name)
