"""The simulator's outputs, CDN and truth: real PNGs of the asked size, made once per size and distinct per
prediction; `#sim:cdn503=N`; `GET`/`DELETE /_sim/predictions`. The simulator runs in this process on a real
socket, so its shared templates can be looked at directly."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from devstack.processes import free_port
from devstack.skytells import admin
from devstack.skytells.app import create_app
from devstack.skytells.model import PREDICTIONS, SimSettings
from tests.helpers import eventually

KEY = {"x-api-key": "sim-key"}


@dataclass
class Sim:
    url: str
    app: web.Application
    hook: str
    callbacks: list[dict[str, Any]]


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    port, hook_port = free_port(), free_port()
    app = create_app(SimSettings(port=port, delay_s=0.05, public_url=f"http://127.0.0.1:{port}"))
    callbacks: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        callbacks.append(await request.json())
        return web.Response(status=204)

    hooks = web.Application()
    hooks.router.add_post("/hook", receive)
    runners = [web.AppRunner(app), web.AppRunner(hooks)]
    for runner, p in zip(runners, (port, hook_port), strict=True):
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", p).start()
    try:
        yield Sim(f"http://127.0.0.1:{port}", app, f"http://127.0.0.1:{hook_port}/hook?generation=g1", callbacks)
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


async def create(http: httpx.AsyncClient, sim: Sim, prompt: str) -> str:
    body = {
        "model": "truefusion-pro",
        "input": {"prompt": prompt},
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
        assert decode_png(data)[:2] == (256, 256)
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
