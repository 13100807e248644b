"""A prediction Skytells accepted is never orphaned: not when the database refuses its id, not when the API dies
before writing it, and not when the create call's answer never comes (a timeout at Studio's end). Driven
through the real API, gateway, persister and the simulator; PostgreSQL refuses writes through a trigger."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from common.references import callback_url
from devstack.processes import free_port
from devstack.stack import Stack
from services.api.submission import NOT_RECORDED_ERROR
from tests.helpers import eventually, wait_for_status
from tests.persister_kit import SIM_KEY, cdn_bytes, insert_generation, stored_objects, wait_row

# Refuses to give a still unfinished generation its prediction id while the prompt says
# `refuse-writes:N:SEQUENCE`, N times in all (a sequence counts them: it is not rolled back with the write).
REFUSING_TRIGGER = r"""
CREATE OR REPLACE FUNCTION test_refuse_prediction_write() RETURNS trigger AS $$
DECLARE m text[];
BEGIN
    m := regexp_match(NEW.prompt, 'refuse-writes:(\d+):(\w+)');
    IF m IS NOT NULL AND OLD.prediction_id IS NULL AND NEW.prediction_id IS NOT NULL
       AND OLD.status IN ('queued', 'processing') AND nextval(m[2]) <= m[1]::int THEN
        RAISE EXCEPTION 'the test refuses this write';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS test_refuse_prediction_write ON generations;
CREATE TRIGGER test_refuse_prediction_write BEFORE UPDATE ON generations
    FOR EACH ROW EXECUTE FUNCTION test_refuse_prediction_write();
"""


@pytest.fixture
async def refusing_db(db) -> AsyncIterator[object]:
    await db.execute(REFUSING_TRIGGER)
    yield db
    await db.execute("DROP TRIGGER IF EXISTS test_refuse_prediction_write ON generations")


async def _refusals(db, times: int) -> str:
    sequence = f"test_refusals_{uuid.uuid4().hex[:12]}"
    await db.execute(f"CREATE SEQUENCE {sequence}")
    return f"refuse-writes:{times}:{sequence}"


async def _sim_predictions(http: httpx.AsyncClient, sim: str, marker: str) -> list[dict]:
    view = (await http.get(f"{sim}/_sim/predictions")).json()
    return [p for p in view if marker in (p["prompt"] or "")]


async def test_a_write_that_fails_for_a_moment_is_retried(http, urls, auth, refusing_db):
    marker = await _refusals(refusing_db, 2)
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": f"brief outage {marker}"}, headers=auth)

    assert response.status_code == 201, response.text
    [prediction] = await _sim_predictions(http, urls.simulator, marker)
    record = await refusing_db.fetchrow("SELECT * FROM generations WHERE id = $1", uuid.UUID(response.json()["id"]))
    assert record["prediction_id"] == prediction["id"]
    assert (await wait_for_status(http, urls.api, response.json()["id"], auth))["status"] == "succeeded"


async def test_a_prediction_whose_id_cannot_be_written_is_canceled_and_answered_503(
    http, urls, auth, user_id, refusing_db
):
    marker = await _refusals(refusing_db, 1000)
    response = await http.post(
        f"{urls.api}/api/generate", json={"prompt": f"no luck {marker} #sim:delay=5"}, headers=auth
    )

    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert "error" in response.json()
    [prediction] = await _sim_predictions(http, urls.simulator, marker)
    assert prediction["status"] == "cancelled"  # nobody pays for an image nobody would store
    record = await refusing_db.fetchrow("SELECT * FROM generations WHERE user_id = $1", user_id)
    assert (record["status"], record["error"]) == ("failed", NOT_RECORDED_ERROR)
    active = "SELECT count(*) FROM generations WHERE user_id = $1 AND status IN ('queued', 'processing')"
    assert await refusing_db.fetchval(active, user_id) == 0  # its quota slot is free again

    async def bound() -> bool:  # its cancel callback still finds the generation by the id in its URL
        found = await refusing_db.fetchval("SELECT prediction_id FROM generations WHERE id = $1", record["id"])
        return found == prediction["id"]

    await eventually("the canceled prediction bound to its generation", bound, timeout=30)


async def test_an_api_killed_before_writing_the_prediction_id_loses_nothing(http, urls, services, db):
    # The row as the API wrote it before calling Skytells, then died: Skytells has the callback URL only.
    gid = await insert_generation(db, None)
    created = await http.post(
        f"{urls.simulator}/v1/predictions",
        headers=SIM_KEY,
        json={
            "model": "truefusion-pro",
            "input": {"prompt": "the API died #sim:delay=0.2"},
            "webhook": {
                "url": callback_url(
                    services.settings.public_webhook_url, gid, services.settings.skytells_webhook_secrets[0]
                ),
                "events": ["started", "completed", "failed", "canceled"],
            },
        },
    )
    assert created.status_code == 201, created.text
    prediction_id = created.json()["id"]

    record = await wait_row(db, gid, timeout=30)

    assert (record["status"], record["prediction_id"]) == ("succeeded", prediction_id)
    objects = await stored_objects(services.settings, gid)
    assert objects[f"generations/{gid}.png"][0] == await cdn_bytes(http, urls.simulator, prediction_id)


@pytest.fixture(scope="module")
def impatient_api(services: Stack) -> Iterator[str]:
    port = free_port()
    process = services.start_service(
        "api", env={"API_PORT": str(port), "SKYTELLS_TIMEOUT_S": "0.5"}, label="api-impatient"
    )
    yield f"http://127.0.0.1:{port}"
    process.stop()


async def test_a_create_call_that_times_out_waits_for_its_callback_and_is_never_paid_twice(
    http, urls, impatient_api, auth, db
):
    marker = f"slow-{uuid.uuid4().hex}"
    body = {"prompt": f"{marker} #sim:slow=1.5"}
    headers = {**auth, "Idempotency-Key": marker}

    response = await http.post(f"{impatient_api}/api/generate", json=body, headers=headers)

    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    [record] = await db.fetch("SELECT * FROM generations WHERE idempotency_key = $1", marker)
    assert record["status"] == "queued" and record["prediction_id"] is None
    repeat = await http.post(f"{impatient_api}/api/generate", json=body, headers=headers)
    assert repeat.status_code == 200, repeat.text
    assert repeat.json()["id"] == str(record["id"])

    generation = await wait_for_status(http, urls.api, str(record["id"]), auth, timeout=30)

    assert generation["status"] == "succeeded"
    [prediction] = await _sim_predictions(http, urls.simulator, marker)  # one paid prediction, not two
    again = await http.post(f"{impatient_api}/api/generate", json=body, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == str(record["id"])
    assert len(await _sim_predictions(http, urls.simulator, marker)) == 1
    bound = await db.fetchval("SELECT prediction_id FROM generations WHERE id = $1", record["id"])
    assert bound == prediction["id"]


@pytest.mark.parametrize("answer", ["cut", "504"])
async def test_a_create_answered_unclearly_is_settled_by_its_callback_and_never_paid_twice(
    http, urls, auth, db, answer
):
    # Skytells made the prediction, but its answer was lost: the connection cut, or a proxy's 504 page.
    marker = f"unclear-{uuid.uuid4().hex}"
    body = {"prompt": f"{marker} #sim:answer={answer} #sim:delay=0.5"}
    headers = {**auth, "Idempotency-Key": marker}

    response = await http.post(f"{urls.api}/api/generate", json=body, headers=headers)

    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    repeat = await http.post(f"{urls.api}/api/generate", json=body, headers=headers)
    assert repeat.status_code == 200, repeat.text
    settled = await wait_for_status(http, urls.api, repeat.json()["id"], auth)
    assert settled["status"] == "succeeded"
    [prediction] = await _sim_predictions(http, urls.simulator, marker)  # one prediction, paid once
    record = await db.fetchrow("SELECT * FROM generations WHERE idempotency_key = $1", marker)
    assert record["prediction_id"] == prediction["id"]
