"""The simulator's outputs, CDN and truth: real PNGs of the asked size, made once per size and distinct per
prediction; `#sim:cdn503=N`; `GET`/`DELETE /_sim/predictions`. The simulator runs in this process on a real
socket, so its shared templates can be looked at directly."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from PIL import Image

from devstack.processes import free_port
from devstack.skytells import admin
from devstack.skytells.app import create_app
from devstack.skytells.model import PREDICTIONS, SimSettings
from tests.helpers import eventually

KEY = {"x-api-key": "sim-key"}


def _reference() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


REFERENCE = _reference()


@dataclass
class Sim:
    url: str
    app: web.Application
    hook: str
    callbacks: list[dict[str, Any]]
    files: str  # a server of REFERENCE at {files}/reference.png, and 404 for any other name


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    port, hook_port = free_port(), free_port()
    app = create_app(SimSettings(port=port, delay_s=0.05, public_url=f"http://127.0.0.1:{port}"))
    callbacks: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        callbacks.append(await request.json())
        return web.Response(status=204)

    async def serve_file(request: web.Request) -> web.Response:
        if request.match_info["name"] != "reference.png":
            raise web.HTTPNotFound()
        return web.Response(body=REFERENCE, content_type="image/png")

    hooks = web.Application()
    hooks.router.add_post("/hook", receive)
    hooks.router.add_get("/files/{name}", serve_file)
    runners = [web.AppRunner(app), web.AppRunner(hooks)]
    for runner, p in zip(runners, (port, hook_port), strict=True):
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", p).start()
    try:
        yield Sim(
            f"http://127.0.0.1:{port}",
            app,
            f"http://127.0.0.1:{hook_port}/hook?generation=g1",
            callbacks,
            f"http://127.0.0.1:{hook_port}/files",
        )
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and chunk types, after checking every CRC and that the pixel data inflates to its size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, kinds = 8, b"", []
    width = height = colour = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body), kind
        kinds.append(kind)
        if kind == b"IHDR":
            width, height, _, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and pos == len(data)
    per_pixel = {2: 3, 3: 1}[colour]
    assert len(zlib.decompress(idat)) == height * (1 + width * per_pixel)
    return width, height, kinds


async def create(http: httpx.AsyncClient, sim: Sim, prompt: str, model: str = "truefusion-pro", **options: Any) -> str:
    body = {
        "model": model,
        "input": {"prompt": prompt, **options},
        "webhook": {"url": sim.hook, "events": ["completed"]},
    }
    response = await http.post(f"{sim.url}/v1/predictions", json=body, headers=KEY)
    assert response.status_code == 201, response.text
    prediction_id: str = response.json()["id"]
    return prediction_id


async def truth(http: httpx.AsyncClient, sim: Sim) -> dict[str, dict[str, Any]]:
    response = await http.get(f"{sim.url}/_sim/predictions")
    assert response.status_code == 200
    return {record["id"]: record for record in response.json()}


async def finished(http: httpx.AsyncClient, sim: Sim, prediction_id: str, timeout: float = 30) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        record = (await truth(http, sim))[prediction_id]
        return record if record["status"] in ("succeeded", "failed", "cancelled") else None

    found: dict[str, Any] = await eventually(f"{prediction_id} to finish", ended, timeout, interval=0.05)
    return found


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


@pytest.mark.parametrize("size", [10 * 1024, 300_000, 4 * 1024 * 1024])
async def test_sized_outputs_are_valid_pngs_of_that_size_distinct_per_prediction(http, sim, size):
    ids = [await create(http, sim, f"sized #sim:size={size}") for _ in range(2)]
    records = [await finished(http, sim, pid) for pid in ids]
    downloads = []
    for record in records:
        (output,) = record["outputs"]
        data = (await http.get(output["url"])).content
        decode_png(data)
        assert len(data) == size == output["bytes"]
        assert hashlib.sha256(data).hexdigest() == output["sha256"]
        downloads.append(data)
    assert downloads[0] != downloads[1]
    mine = [sim.app[PREDICTIONS][pid].outputs[0] for pid in ids]
    assert mine[0].parts[0] is mine[1].parts[0]  # the pixel data is made once for the size, then shared


async def test_a_64_mib_output_is_streamed_from_one_shared_template(http, sim):
    size = 64 * 1024 * 1024
    ids = [await create(http, sim, f"huge #sim:size={size} #sim:outputs=2")]
    record = await finished(http, sim, ids[0])
    assert [o["bytes"] for o in record["outputs"]] == [size, size]
    digest, length = hashlib.sha256(), 0
    async with http.stream("GET", record["outputs"][1]["url"]) as response:
        assert response.headers["content-length"] == str(size)
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
            length += len(chunk)
    assert length == size and digest.hexdigest() == record["outputs"][1]["sha256"]
    assert record["outputs"][0]["sha256"] != record["outputs"][1]["sha256"]
    first, second = sim.app[PREDICTIONS][ids[0]].outputs
    assert first.parts[0] is second.parts[0]


async def test_default_outputs_are_gradients_with_their_own_colours(http, sim):
    ids = [await create(http, sim, "a lighthouse") for _ in range(2)]
    images = []
    for pid in ids:
        (output,) = (await finished(http, sim, pid))["outputs"]
        data = (await http.get(output["url"])).content
        assert decode_png(data)[:2] == (1024, 1024)  # the schema's default size
        assert hashlib.sha256(data).hexdigest() == output["sha256"]
        images.append(data)
    palettes = [data[data.index(b"PLTE") : data.index(b"PLTE") + 100] for data in images]
    assert palettes[0] != palettes[1]


async def test_cdn503_refuses_the_first_n_downloads_of_each_output(http, sim):
    pid = await create(http, sim, "busy #sim:cdn503=2 #sim:outputs=2")
    outputs = (await finished(http, sim, pid))["outputs"]
    for output in outputs:
        answers = [(await http.get(output["url"])).status_code for _ in range(3)]
        assert answers == [503, 503, 200]


async def test_truth_lists_every_prediction_and_reset_forgets_them(http, sim):
    dropped = await create(http, sim, "nobody hears #sim:drop")
    failed = await create(http, sim, "doomed #sim:fail")
    waiting = await create(http, sim, "slow #sim:delay=30")
    canceled = await http.post(f"{sim.url}/v1/predictions/{waiting}/cancel", headers=KEY)
    assert canceled.status_code == 200
    await finished(http, sim, dropped)
    await finished(http, sim, failed)
    records = await truth(http, sim)

    assert set(records) == {dropped, failed, waiting}
    assert records[dropped]["status"] == "succeeded" and len(records[dropped]["outputs"]) == 1
    assert records[dropped]["callbacks"] == []
    assert records[dropped]["webhook"] == sim.hook  # with its query, as Studio gave it
    assert records[failed]["status"] == "failed" and records[failed]["outputs"] == []
    assert records[waiting]["canceled"] is True and records[waiting]["status"] == "cancelled"
    assert not records[dropped]["canceled"] and not records[failed]["canceled"]
    assert all(r["createdAt"] for r in records.values())

    assert (await http.delete(f"{sim.url}/_sim/predictions")).status_code == 204
    assert await truth(http, sim) == {}
    assert (await http.get(f"{sim.url}/v1/predictions/{dropped}", headers=KEY)).status_code == 502


@pytest.mark.parametrize("handler", [admin.list_predictions, admin.reset])
async def test_truth_answers_only_loopback_peers(sim, handler):
    request = make_mocked_request("GET", "/_sim/predictions", app=sim.app).clone(remote="192.0.2.9")
    with pytest.raises(web.HTTPNotFound):
        await handler(request)
    loopback = make_mocked_request("GET", "/_sim/predictions", app=sim.app).clone(remote="127.0.0.1")
    assert (await handler(loopback)).status in (200, 204)


async def test_models_are_listed_with_their_input_schemas(http, sim):
    listed = (await http.get(f"{sim.url}/v1/models?fields=input_schema", headers=KEY)).json()
    assert [m["name"] for m in listed] == ["truefusion-pro", "truefusion-edge", "truefusion-2.0"]
    assert all(m["input_schema"]["additionalProperties"] is False for m in listed)
    assert "input_schema" not in (await http.get(f"{sim.url}/v1/models", headers=KEY)).json()[0]
    one = (await http.get(f"{sim.url}/v1/models/truefusion-2.0?fields=input_schema", headers=KEY)).json()
    schema = one["input_schema"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {
        "prompt", "negative_prompt", "width", "height", "num_outputs", "seed", "output_format", "image",
        "image_strength",
    }  # fmt: skip
    assert schema["properties"]["image_strength"]["default"] == 0.6
    edge = (await http.get(f"{sim.url}/v1/models/truefusion-edge?fields=input_schema", headers=KEY)).json()
    assert edge["input_schema"]["properties"]["width"]["maximum"] == 1024
    missing = await http.get(f"{sim.url}/v1/models/nope", headers=KEY)
    assert missing.status_code == 404 and missing.json()["error"]["error_id"] == "MODEL_NOT_FOUND"
    assert (await http.get(f"{sim.url}/v1/models")).status_code == 401


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
async def test_an_input_outside_the_schema_is_a_422_naming_the_field(http, sim, model, options, field):
    body = {"model": model, "input": {"prompt": "x", **options}}
    answer = await http.post(f"{sim.url}/v1/predictions", json=body, headers=KEY)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["error_id"] == "VALIDATION_ERROR" and f"Invalid input: {field}: " in error["message"]
    assert await truth(http, sim) == {}


async def test_outputs_have_the_asked_size_format_and_count_and_a_seed_repeats_them(http, sim):
    options = {"width": 512, "height": 768, "num_outputs": 2, "seed": 7, "output_format": "jpeg"}
    first, again = [await create(http, sim, "a harbour", **options) for _ in range(2)]
    other_seed = await create(http, sim, "a harbour", **{**options, "seed": 8})
    downloads = {}
    for pid in (first, again, other_seed):
        record = await finished(http, sim, pid)
        assert record["input"] == {"prompt": "a harbour", **options, "seed": 8 if pid == other_seed else 7}
        downloads[pid] = [(await http.get(o["url"])).content for o in record["outputs"]]
        for data in downloads[pid]:
            with Image.open(io.BytesIO(data)) as picture:
                assert (picture.format, picture.size) == ("JPEG", (512, 768))
                picture.load()
    assert len(downloads[first]) == 2 and downloads[first][0] != downloads[first][1]
    assert downloads[first] == downloads[again]
    assert downloads[other_seed] != downloads[first]
    completed = (await http.get(f"{sim.url}/v1/predictions/{first}", headers=KEY)).json()
    assert completed["metrics"]["image_count"] == 2 and completed["metrics"]["predict_time"] > 0
    assert completed["metrics"]["total_time"] >= completed["metrics"]["predict_time"]
    assert completed["metadata"]["billing"]["credits_used"] == 0.06


@pytest.mark.parametrize(("fmt", "pillow"), [("png", "PNG"), ("webp", "WEBP")])
async def test_png_and_webp_outputs_open_as_such(http, sim, fmt, pillow):
    pid = await create(http, sim, "a field", "truefusion-edge", width=256, height=320, output_format=fmt)
    (output,) = (await finished(http, sim, pid))["outputs"]
    assert output["url"].endswith(f".{fmt}")
    answer = await http.get(output["url"])
    assert answer.headers["content-type"] == f"image/{fmt}"
    with Image.open(io.BytesIO(answer.content)) as picture:
        assert (picture.format, picture.size) == (pillow, (256, 320))
        picture.load()


async def test_a_reference_image_is_downloaded_and_recorded(http, sim):
    pid = await create(http, sim, "like this", "truefusion-2.0", image=f"{sim.files}/reference.png")
    record = await finished(http, sim, pid)
    assert base64.b64decode(record["imageBytes"]) == REFERENCE
    assert record["input"]["image"] == f"{sim.files}/reference.png"
    plain = await finished(http, sim, await create(http, sim, "no reference"))
    assert plain["imageBytes"] is None


@pytest.mark.parametrize("name", ["missing.png", "unreachable"])
async def test_a_reference_image_it_cannot_read_is_a_422(http, sim, name):
    url = f"{sim.files}/{name}" if name != "unreachable" else f"http://127.0.0.1:{free_port()}/x.png"
    body = {"model": "truefusion-2.0", "input": {"prompt": "x", "image": url}}
    answer = await http.post(f"{sim.url}/v1/predictions", json=body, headers=KEY)
    assert answer.status_code == 422
    assert answer.json()["error"]["message"].startswith("Invalid input: image: ")
    assert await truth(http, sim) == {}


async def test_an_unknown_model_is_a_404(http, sim):
    answer = await http.post(f"{sim.url}/v1/predictions", json={"model": "nope", "input": {"prompt": "x"}}, headers=KEY)
    assert answer.status_code == 404 and answer.json()["error"]["error_id"] == "MODEL_NOT_FOUND"
