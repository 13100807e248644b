"""The simulator's models: listed with their input schemas, an input outside the schema refused naming the field,
reference images downloaded and recorded (or refused when unreadable), an unknown model a 404."""

from __future__ import annotations

import base64

import pytest

from devstack.processes import free_port
from tests.simulator_kit import KEY, REFERENCE, create, finished, truth


async def test_models_are_listed_with_their_input_schemas(http, own_sim):
    listed = (await http.get(f"{own_sim.url}/v1/models?fields=input_schema", headers=KEY)).json()
    assert [m["name"] for m in listed] == ["truefusion-pro", "truefusion-edge", "truefusion-2.0"]
    assert all(m["input_schema"]["additionalProperties"] is False for m in listed)
    assert "input_schema" not in (await http.get(f"{own_sim.url}/v1/models", headers=KEY)).json()[0]
    one = (await http.get(f"{own_sim.url}/v1/models/truefusion-2.0?fields=input_schema", headers=KEY)).json()
    schema = one["input_schema"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {
        "prompt", "negative_prompt", "width", "height", "num_outputs", "seed", "output_format", "image",
        "image_strength",
    }  # fmt: skip
    assert schema["properties"]["image_strength"]["default"] == 0.6
    edge = (await http.get(f"{own_sim.url}/v1/models/truefusion-edge?fields=input_schema", headers=KEY)).json()
    assert edge["input_schema"]["properties"]["width"]["maximum"] == 1024
    missing = await http.get(f"{own_sim.url}/v1/models/nope", headers=KEY)
    assert missing.status_code == 404 and missing.json()["error"]["error_id"] == "MODEL_NOT_FOUND"
    assert (await http.get(f"{own_sim.url}/v1/models")).status_code == 401


@pytest.mark.parametrize(
    ("model", "options", "field"),
    [
        ("truefusion-pro", {"width": 500}, "width"),
        ("truefusion-pro", {"num_outputs": 5}, "num_outputs"),
        ("truefusion-pro", {"output_format": "gif"}, "output_format"),
        ("truefusion-pro", {"image": "http://x/y.png"}, "image"),
        ("truefusion-edge", {"width": 2048}, "width"),
        ("truefusion-edge", {"negative_prompt": "no"}, "negative_prompt"),
        ("truefusion-2.0", {"image_strength": 1.5}, "image_strength"),
        ("truefusion-pro", {"seed": -1}, "seed"),
    ],
)
async def test_an_input_outside_the_schema_is_a_422_naming_the_field(http, own_sim, model, options, field):
    body = {"model": model, "input": {"prompt": "x", **options}}
    answer = await http.post(f"{own_sim.url}/v1/predictions", json=body, headers=KEY)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["error_id"] == "VALIDATION_ERROR" and f"Invalid input: {field}: " in error["message"]
    assert await truth(http, own_sim) == {}


async def test_a_reference_image_is_downloaded_and_recorded(http, own_sim):
    pid = await create(http, own_sim, "like this", "truefusion-2.0", image=f"{own_sim.files}/reference.png")
    record = await finished(http, own_sim, pid)
    assert base64.b64decode(record["imageBytes"]) == REFERENCE
    assert record["input"]["image"] == f"{own_sim.files}/reference.png"
    plain = await finished(http, own_sim, await create(http, own_sim, "no reference"))
    assert plain["imageBytes"] is None


@pytest.mark.parametrize("name", ["missing.png", "unreachable"])
async def test_a_reference_image_it_cannot_read_is_a_422(http, own_sim, name):
    url = f"{own_sim.files}/{name}" if name != "unreachable" else f"http://127.0.0.1:{free_port()}/x.png"
    body = {"model": "truefusion-2.0", "input": {"prompt": "x", "image": url}}
    answer = await http.post(f"{own_sim.url}/v1/predictions", json=body, headers=KEY)
    assert answer.status_code == 422
    assert answer.json()["error"]["message"].startswith("Invalid input: image: ")
    assert await truth(http, own_sim) == {}


async def test_an_unknown_model_is_a_404(http, own_sim):
    answer = await http.post(
        f"{own_sim.url}/v1/predictions", json={"model": "nope", "input": {"prompt": "x"}}, headers=KEY
    )
    assert answer.status_code == 404 and answer.json()["error"]["error_id"] == "MODEL_NOT_FOUND"
