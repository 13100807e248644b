"""The simulator's CDN: making each prediction's outputs (`png.py`) and serving them, with the CDN directives
(`#sim:cdn503=N`, `#sim:cdnbusy=N`, `#sim:cdngone`, `#sim:redirect=HOST`, `#sim:chunked`, `#sim:cdnslow=S`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

from aiohttp import web

from devstack.skytells.catalog import with_defaults
from devstack.skytells.model import OUTPUTS, PREDICTIONS, SIM_SETTINGS, SimPrediction
from devstack.skytells.output import Output

NOT_AN_IMAGE = b"<html>this is not an image</html>"
_LARGE = 1024 * 1024  # a template this big is built off the event loop, so callbacks and downloads go on


async def make_outputs(app: web.Application, prediction: SimPrediction) -> list[Output]:
    """The prediction's images: `num_outputs` of them (or `#sim:outputs=N`), of the asked size and format. With a
    `seed`, the same model, prompt and input give the same bytes; without one, each prediction draws its own."""
    chosen = with_defaults(prediction.model, prediction.input)
    count = max(1, int(prediction.directives.get("outputs") or chosen.get("num_outputs") or 1))
    outputs = app[OUTPUTS]
    if "notimage" in prediction.directives:
        return [Output((NOT_AN_IMAGE,), len(NOT_AN_IMAGE), hashlib.sha256(NOT_AN_IMAGE).hexdigest())]
    if prediction.image is not None:  # the reference image by its bytes: its URL may be presigned afresh each time
        chosen["image"] = hashlib.sha256(prediction.image).hexdigest()
    identity = (
        json.dumps([prediction.model, chosen], sort_keys=True) if "seed" in chosen else f"{prediction.id} {chosen}"
    )
    labels = [f"{identity} {n}" for n in range(count)]
    size = prediction.directives.get("size")
    if not size:
        width, height, fmt = int(chosen["width"]), int(chosen["height"]), str(chosen["output_format"])
        if outputs.is_built(width, height, fmt):
            return [outputs.picture(width, height, fmt, label) for label in labels]
        return await asyncio.to_thread(lambda: [outputs.picture(width, height, fmt, label) for label in labels])
    nbytes = max(1, int(size))
    if nbytes >= _LARGE and not outputs.is_cached(nbytes):
        return await asyncio.to_thread(lambda: [outputs.noise_of(nbytes, label) for label in labels])
    return [outputs.noise_of(nbytes, label) for label in labels]


async def serve(request: web.Request) -> web.StreamResponse:
    prediction = request.app[PREDICTIONS].get(request.match_info["id"])
    index = int(request.match_info["n"])
    ttl = request.app[SIM_SETTINGS].output_ttl_s
    if (
        prediction is None
        or index >= len(prediction.outputs)
        or prediction.completed_monotonic is None
        or time.monotonic() - prediction.completed_monotonic > ttl
    ):
        raise web.HTTPNotFound(text="output not found or expired")
    prediction.cdn_requests += 1
    prediction.output_requests[index] += 1
    directives = prediction.directives
    if "cdngone" in directives:
        raise web.HTTPNotFound(text="output not found or expired")
    if prediction.cdn_requests <= int(directives.get("cdnbusy") or 0):
        raise web.HTTPServiceUnavailable(text="CDN busy")
    if prediction.output_requests[index] <= int(directives.get("cdn503") or 0):
        raise web.HTTPServiceUnavailable(text="CDN busy")
    if "redirect" in directives:
        raise web.HTTPFound(f"http://{directives['redirect']}{request.path}")
    output = prediction.outputs[index]
    headers = {"Content-Type": output.content_type}
    if "chunked" not in directives:  # `#sim:chunked`: no Content-Length, the size shows only at the end
        headers["Content-Length"] = str(output.size)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    step = 256 * 1024
    pause = float(directives.get("cdnslow") or 0) / max(1, -(-output.size // step))
    for chunk in output.chunks(step):
        await response.write(chunk)
        if pause:  # `#sim:cdnslow=S`: the body takes about S seconds
            await asyncio.sleep(pause)
    await response.write_eof()
    return response
