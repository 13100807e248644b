"""The simulator's own truth, outside Skytells' API surface (not under `/v1`), for tests and the fault soak.

- `GET /_sim/predictions`: a JSON list with one object per prediction the simulator created (dropped-callback
  ones included), oldest first: `id`, `status` (Skytells' spelling), `createdAt`, `webhook` (the callback URL
  as given, query included), `outputs` (`url`, `sha256`, `bytes` of each output it made), `canceled` (whether
  a cancel call ended it), and for tests `model`, `input` (as the create call gave it), `imageBytes` (the
  reference image it downloaded for an `image` input, base64; else null), `prompt`, `callbacks` (what was
  sent and the answers; a 5xx answer other than 503 with `Retry-After` is listed again in the callback's
  `unexpected`), `cdnRequests` and `getRequests`.
- `DELETE /_sim/predictions`: forget every prediction (their pending callbacks are dropped); 204.

No key is asked for, so both answer only to loopback peers (404 to anyone else, as an unknown path would).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from typing import Any

from aiohttp import web

from devstack.skytells.model import PREDICTIONS, SIM_SETTINGS, TASKS, SimPrediction


def _from_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def _record(prediction: SimPrediction, base: str) -> dict[str, Any]:
    urls = prediction.output_urls(base)
    return {
        "id": prediction.id,
        "status": prediction.status,
        "createdAt": prediction.created_at.isoformat(),
        "webhook": prediction.webhook_url,
        "outputs": [
            {"url": url, "sha256": output.sha256, "bytes": output.size}
            for url, output in zip(urls, prediction.outputs, strict=True)
        ],
        "canceled": prediction.canceled,
        "prompt": prediction.input.get("prompt"),
        "model": prediction.model,
        "input": prediction.input,
        "imageBytes": None if prediction.image is None else base64.b64encode(prediction.image).decode(),
        "callbacks": prediction.callbacks,
        "cdnRequests": prediction.cdn_requests,
        "getRequests": prediction.get_requests,
    }


async def list_predictions(request: web.Request) -> web.Response:
    if not _from_loopback(request):
        raise web.HTTPNotFound()
    base = request.app[SIM_SETTINGS].public_url
    return web.json_response([_record(p, base) for p in list(request.app[PREDICTIONS].values())])


async def reset(request: web.Request) -> web.Response:
    if not _from_loopback(request):
        raise web.HTTPNotFound()
    for prediction in request.app[PREDICTIONS].values():
        prediction.settled.set()  # a create call waiting for it (`"await": true`) answers now
    request.app[PREDICTIONS].clear()
    tasks = request.app[TASKS]
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_sim/predictions", list_predictions)
    app.router.add_delete("/_sim/predictions", reset)
