"""A generation's `input`, checked against the model's schema as Skytells publishes it (`GET /api/models`):
a violation is a 400 naming the field before any quota is taken or Skytells is called; a valid input reaches
Skytells as `{prompt, ...input}` and comes back in the generation. The schema cache: kept MODELS_CACHE_S, the
last one read used while Skytells cannot be read, a 503 with none yet."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from common.errors import ApiError
from common.skytells import SkytellsClient
from devstack.processes import free_port
from services.api.bodies import GenerateRequest
from services.api.models import PROMPT_ONLY, ModelCatalog
from tests.helpers import eventually, listening, wait_for_status

SIM_KEY = {"x-api-key": "sim-key"}


async def _sim_inputs(http, sim: str, prompt: str) -> list[dict[str, Any]]:
    records = (await http.get(f"{sim}/_sim/predictions")).json()
    return [record["input"] for record in records if record["prompt"] == prompt]


async def test_models_are_listed_with_the_schemas_skytells_publishes(http, urls, auth, settings):
    response = await http.get(f"{urls.api}/api/models", headers=auth)
    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["id"] for item in items] == list(settings.allowed_models)
    assert [item["default"] for item in items] == [True] + [False] * (len(items) - 1)
    for item in items:
        published = await http.get(f"{urls.simulator}/v1/models/{item['id']}?fields=input_schema", headers=SIM_KEY)
        assert item["inputSchema"] == published.json()["input_schema"]
    assert (await http.get(f"{urls.api}/api/models")).status_code == 401


@pytest.mark.parametrize(
    ("model", "options", "field"),
    [
        ("truefusion-pro", {"width": 500}, "width"),
        ("truefusion-pro", {"height": 4096}, "height"),
        ("truefusion-pro", {"num_outputs": 0}, "num_outputs"),
        ("truefusion-pro", {"output_format": "bmp"}, "output_format"),
        ("truefusion-pro", {"seed": "seven"}, "seed"),
        ("truefusion-pro", {"negative_prompt": "x" * 501}, "negative_prompt"),
        ("truefusion-pro", {"colour": "blue"}, "colour"),
        ("truefusion-edge", {"num_outputs": 2}, "num_outputs"),
        ("truefusion-2.0", {"image_strength": -0.1}, "image_strength"),
    ],
)
async def test_an_input_outside_the_schema_is_a_400_naming_the_field_and_reaches_no_one(
    http, urls, auth, db, user_id, model, options, field
):
    prompt = f"never sent {uuid.uuid4().hex}"
    body = {"prompt": prompt, "model": model, "input": options}
    response = await http.post(f"{urls.api}/api/generate", json=body, headers=auth)

    assert response.status_code == 400
    assert response.json()["error"].startswith(f"Invalid input: {field}: ")
    assert await db.fetchval("SELECT count(*) FROM generations WHERE user_id = $1", user_id) == 0
    assert await _sim_inputs(http, urls.simulator, prompt) == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"prompt": "again"}, "Invalid input: prompt: "),
        ([1, 2], "Invalid input: input: must be an object"),
        ("width=512", "Invalid input: input: must be an object"),
        ({"negative_prompt": "a\u0000b"}, "Invalid input: negative_prompt: "),
    ],
)
async def test_a_malformed_input_is_a_400(http, urls, auth, raw, message):
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": "a cat", "input": raw}, headers=auth)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


async def test_a_valid_input_reaches_skytells_with_the_prompt_and_comes_back_in_the_generation(http, urls, auth):
    prompt = f"a lighthouse {uuid.uuid4().hex}"
    options = {"width": 512, "height": 256, "negative_prompt": "fog", "seed": 3, "output_format": "webp"}
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt, "input": options}, headers=auth)
    assert response.status_code == 201, response.text
    assert response.json()["input"] == options
    assert await _sim_inputs(http, urls.simulator, prompt) == [{"prompt": prompt, **options}]
    done = await wait_for_status(http, urls.api, response.json()["id"], auth)
    assert done["status"] == "succeeded" and done["input"] == options
    assert urlsplit(done["outputUrl"]).path.endswith(".webp")  # presigned: the key is the path


async def test_without_input_only_the_prompt_is_sent(http, urls, auth):
    prompt = f"a plain cat {uuid.uuid4().hex}"
    response = await http.post(f"{urls.api}/api/generate", json={"prompt": prompt}, headers=auth)
    assert response.status_code == 201 and response.json()["input"] == {}
    assert await _sim_inputs(http, urls.simulator, prompt) == [{"prompt": prompt}]


async def test_skytells_verdict_on_an_input_is_a_400_with_its_message(http, urls, auth, db, user_id):
    # Valid for the schema, but the simulator cannot read the reference image: its 422 is the client's 400.
    body = {
        "prompt": "from a picture",
        "model": "truefusion-2.0",
        "input": {"image": f"http://127.0.0.1:{free_port()}/gone.png"},
    }
    response = await http.post(f"{urls.api}/api/generate", json=body, headers=auth)
    assert response.status_code == 400
    assert response.json()["error"].startswith("Invalid input: image: the URL could not be read")
    assert await db.fetchval("SELECT status FROM generations WHERE user_id = $1", user_id) == "failed"


async def test_an_idempotency_key_reused_with_another_input_is_a_409(http, urls, auth):
    headers = {**auth, "Idempotency-Key": f"inputs-{uuid.uuid4()}"}
    first = await http.post(f"{urls.api}/api/generate", json={"prompt": "a cat", "input": {"seed": 1}}, headers=headers)
    again = await http.post(f"{urls.api}/api/generate", json={"prompt": "a cat", "input": {"seed": 1}}, headers=headers)
    other = await http.post(f"{urls.api}/api/generate", json={"prompt": "a cat", "input": {"seed": 2}}, headers=headers)
    assert first.status_code == 201 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 409


class Publisher:
    """A stand-in for Skytells' model endpoint that a test can break and mend, counting the reads."""

    def __init__(self) -> None:
        self.answer: tuple[int, Any] = (200, {"name": "m", "input_schema": PROMPT_ONLY})
        self.reads = 0

    async def model(self, request: web.Request) -> web.Response:
        self.reads += 1
        assert request.query["fields"] == "input_schema"
        status, body = self.answer
        return web.json_response(body, status=status)


@pytest.fixture
async def publisher() -> AsyncIterator[tuple[Publisher, SkytellsClient]]:
    stand_in = Publisher()
    app = web.Application()
    app.router.add_get("/v1/models/{slug}", stand_in.model)
    async with listening(app) as url:
        client = SkytellsClient(f"{url}/v1", "key", timeout=2)
        try:
            yield stand_in, client
        finally:
            await client.aclose()


def _schema(largest: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"prompt": {"type": "string"}, "width": {"type": "integer", "maximum": largest}},
        "additionalProperties": False,
    }


async def test_a_schema_is_kept_for_its_time_and_the_last_one_serves_while_skytells_fails(publisher):
    stand_in, client = publisher
    now = [0.0]
    catalog = ModelCatalog(client, cache_s=300, clock=lambda: now[0])
    stand_in.answer = (200, {"input_schema": _schema(512)})
    assert (await catalog.schema("m")).problem("p", {"width": 600}) == "width: 600 is greater than the maximum of 512"
    await catalog.schema("m")
    assert stand_in.reads == 1  # kept

    now[0] = 301.0
    stand_in.answer = (500, {"error": "down"})
    stale = await catalog.schema("m")  # expired: answered at once from the last read while one read refreshes it
    assert stale.problem("p", {"width": 600}) is not None
    await eventually("the refresh to be tried", lambda: stand_in.reads == 2)
    assert (await catalog.schema("m")).problem("p", {"width": 600}) is not None  # still the last one read

    now[0] = 400.0
    stand_in.answer = (200, {"input_schema": _schema(1024)})
    await catalog.schema("m")
    await eventually("the schema to be read again", lambda: stand_in.reads == 3)
    assert (await catalog.schema("m")).problem("p", {"width": 600}) is None
    await catalog.aclose()


async def test_with_no_schema_read_yet_an_unreadable_skytells_is_a_503(publisher):
    stand_in, client = publisher
    stand_in.answer = (502, {"error": "down"})
    catalog = ModelCatalog(client, cache_s=300)
    with pytest.raises(ApiError) as raised:
        await catalog.schema("m")
    assert raised.value.status == 503 and int(raised.value.headers["Retry-After"]) >= 1
    await catalog.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        (200, {"name": "m"}),
        (200, {"input_schema": {"type": 7}}),
        (200, {"input_schema": "text"}),
        (200, {"input_schema": {"$ref": "https://schemas.example/elsewhere.json"}}),
        (404, {}),
    ],
)
async def test_a_model_without_a_usable_schema_accepts_the_prompt_alone(publisher, answer):
    stand_in, client = publisher
    stand_in.answer = answer
    read = await ModelCatalog(client, cache_s=300).schema("m")
    assert read.schema == PROMPT_ONLY
    assert read.problem("a cat", {}) is None
    assert (
        read.problem("a cat", {"width": 512}) == "width: Additional properties are not allowed ('width' was unexpected)"
    )


def test_a_request_without_input_keeps_the_fingerprint_it_had_before_inputs():
    # An Idempotency-Key used before a deploy is replayed after it, not refused as reused with another body.
    before = hashlib.sha256(json.dumps({"model": "m", "prompt": "p"}, sort_keys=True).encode()).hexdigest()
    assert GenerateRequest(prompt="p", model="m").fingerprint == before
    assert GenerateRequest(prompt="p", model="m", input={"seed": 1}).fingerprint != before
