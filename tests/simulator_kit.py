"""The Skytells simulator run in the test's own process on a real socket (so its shared templates can be looked
at directly), with a webhook receiver and a file server beside it, and the calls its tests make."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web
from PIL import Image

from devstack.processes import free_port
from devstack.skytells.app import create_app
from devstack.skytells.model import SimSettings
from tests.helpers import eventually, listening

KEY = {"x-api-key": "sim-key"}


def _reference_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


REFERENCE = _reference_png()


@dataclass
class Sim:
    url: str
    app: web.Application
    hook: str
    callbacks: list[dict[str, Any]]
    files: str  # a server of REFERENCE at {files}/reference.png, and 404 for any other name


@asynccontextmanager
async def running_sim() -> AsyncIterator[Sim]:
    port = free_port()  # known before the app is made: its public URL names it
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
    async with listening(app, port=port) as url, listening(hooks) as hooks_url:
        yield Sim(url, app, f"{hooks_url}/hook?generation=g1", callbacks, f"{hooks_url}/files")


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
