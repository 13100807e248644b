"""The simulator's outputs, CDN and truth: real PNGs of the asked size, made once per size and distinct per
prediction; `#sim:cdn503=N`; `GET`/`DELETE /_sim/predictions`. The simulator runs in this process on a real
socket (`simulator_kit.py`), so its shared templates can be looked at directly. Its models, their input schemas
and reference images are in `test_simulator_models.py`."""

from __future__ import annotations

import hashlib
import io

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from PIL import Image

from devstack.skytells import admin
from devstack.skytells.model import PREDICTIONS
from tests.simulator_kit import KEY, create, decode_png, finished, truth


@pytest.mark.parametrize("size", [10 * 1024, 300_000, 4 * 1024 * 1024])
async def test_sized_outputs_are_valid_pngs_of_that_size_distinct_per_prediction(http, own_sim, size):
    ids = [await create(http, own_sim, f"sized #sim:size={size}") for _ in range(2)]
    records = [await finished(http, own_sim, pid) for pid in ids]
    downloads = []
    for record in records:
        (output,) = record["outputs"]
        data = (await http.get(output["url"])).content
        decode_png(data)
        assert len(data) == size == output["bytes"]
        assert hashlib.sha256(data).hexdigest() == output["sha256"]
        downloads.append(data)
    assert downloads[0] != downloads[1]
    mine = [own_sim.app[PREDICTIONS][pid].outputs[0] for pid in ids]
    assert mine[0].parts[0] is mine[1].parts[0]  # the pixel data is made once for the size, then shared


async def test_a_64_mib_output_is_streamed_from_one_shared_template(http, own_sim):
    size = 64 * 1024 * 1024
    ids = [await create(http, own_sim, f"huge #sim:size={size} #sim:outputs=2")]
    record = await finished(http, own_sim, ids[0])
    assert [o["bytes"] for o in record["outputs"]] == [size, size]
    digest, length = hashlib.sha256(), 0
    async with http.stream("GET", record["outputs"][1]["url"]) as response:
        assert response.headers["content-length"] == str(size)
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
            length += len(chunk)
    assert length == size and digest.hexdigest() == record["outputs"][1]["sha256"]
    assert record["outputs"][0]["sha256"] != record["outputs"][1]["sha256"]
    first, second = own_sim.app[PREDICTIONS][ids[0]].outputs
    assert first.parts[0] is second.parts[0]


async def test_default_outputs_are_gradients_with_their_own_colours(http, own_sim):
    ids = [await create(http, own_sim, "a lighthouse") for _ in range(2)]
    images = []
    for pid in ids:
        (output,) = (await finished(http, own_sim, pid))["outputs"]
        data = (await http.get(output["url"])).content
        assert decode_png(data)[:2] == (1024, 1024)  # the schema's default size
        assert hashlib.sha256(data).hexdigest() == output["sha256"]
        images.append(data)
    palettes = [data[data.index(b"PLTE") : data.index(b"PLTE") + 100] for data in images]
    assert palettes[0] != palettes[1]


async def test_cdn503_refuses_the_first_n_downloads_of_each_output(http, own_sim):
    pid = await create(http, own_sim, "busy #sim:cdn503=2 #sim:outputs=2")
    outputs = (await finished(http, own_sim, pid))["outputs"]
    for output in outputs:
        answers = [(await http.get(output["url"])).status_code for _ in range(3)]
        assert answers == [503, 503, 200]


async def test_truth_lists_every_prediction_and_reset_forgets_them(http, own_sim):
    dropped = await create(http, own_sim, "nobody hears #sim:drop")
    failed = await create(http, own_sim, "doomed #sim:fail")
    waiting = await create(http, own_sim, "slow #sim:delay=30")
    canceled = await http.post(f"{own_sim.url}/v1/predictions/{waiting}/cancel", headers=KEY)
    assert canceled.status_code == 200
    await finished(http, own_sim, dropped)
    await finished(http, own_sim, failed)
    records = await truth(http, own_sim)

    assert set(records) == {dropped, failed, waiting}
    assert records[dropped]["status"] == "succeeded" and len(records[dropped]["outputs"]) == 1
    assert records[dropped]["callbacks"] == []
    assert records[dropped]["webhook"] == own_sim.hook  # with its query, as Studio gave it
    assert records[failed]["status"] == "failed" and records[failed]["outputs"] == []
    assert records[waiting]["canceled"] is True and records[waiting]["status"] == "cancelled"
    assert not records[dropped]["canceled"] and not records[failed]["canceled"]
    assert all(r["createdAt"] for r in records.values())

    assert (await http.delete(f"{own_sim.url}/_sim/predictions")).status_code == 204
    assert await truth(http, own_sim) == {}
    assert (await http.get(f"{own_sim.url}/v1/predictions/{dropped}", headers=KEY)).status_code == 502


@pytest.mark.parametrize("handler", [admin.list_predictions, admin.reset])
async def test_truth_answers_only_loopback_peers(own_sim, handler):
    request = make_mocked_request("GET", "/_sim/predictions", app=own_sim.app).clone(remote="192.0.2.9")
    with pytest.raises(web.HTTPNotFound):
        await handler(request)
    loopback = make_mocked_request("GET", "/_sim/predictions", app=own_sim.app).clone(remote="127.0.0.1")
    assert (await handler(loopback)).status in (200, 204)


async def test_outputs_have_the_asked_size_format_and_count_and_a_seed_repeats_them(http, own_sim):
    options = {"width": 512, "height": 768, "num_outputs": 2, "seed": 7, "output_format": "jpeg"}
    first, again = [await create(http, own_sim, "a harbour", **options) for _ in range(2)]
    other_seed = await create(http, own_sim, "a harbour", **{**options, "seed": 8})
    downloads = {}
    for pid in (first, again, other_seed):
        record = await finished(http, own_sim, pid)
        assert record["input"] == {"prompt": "a harbour", **options, "seed": 8 if pid == other_seed else 7}
        downloads[pid] = [(await http.get(o["url"])).content for o in record["outputs"]]
        for data in downloads[pid]:
            with Image.open(io.BytesIO(data)) as picture:
                assert (picture.format, picture.size) == ("JPEG", (512, 768))
                picture.load()
    assert len(downloads[first]) == 2 and downloads[first][0] != downloads[first][1]
    assert downloads[first] == downloads[again]
    assert downloads[other_seed] != downloads[first]
    completed = (await http.get(f"{own_sim.url}/v1/predictions/{first}", headers=KEY)).json()
    assert completed["metrics"]["image_count"] == 2 and completed["metrics"]["predict_time"] > 0
    assert completed["metrics"]["total_time"] >= completed["metrics"]["predict_time"]
    assert completed["metadata"]["billing"]["credits_used"] == 0.06


@pytest.mark.parametrize(("fmt", "pillow"), [("png", "PNG"), ("webp", "WEBP")])
async def test_png_and_webp_outputs_open_as_such(http, own_sim, fmt, pillow):
    pid = await create(http, own_sim, "a field", "truefusion-edge", width=256, height=320, output_format=fmt)
    (output,) = (await finished(http, own_sim, pid))["outputs"]
    assert output["url"].endswith(f".{fmt}")
    answer = await http.get(output["url"])
    assert answer.headers["content-type"] == f"image/{fmt}"
    with Image.open(io.BytesIO(answer.content)) as picture:
        assert (picture.format, picture.size) == (pillow, (256, 320))
        picture.load()
