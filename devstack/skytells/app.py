"""The simulator's HTTP app: Skytells' prediction API, its signed callbacks, and its CDN.

Behaviour is steered per prediction by directives in the prompt (`#sim:delay=2 #sim:dup=3`), so black-box
tests drive it through Studio's public API. The directives Studio's README lists (`#sim:delay=S`, `#sim:fail`,
`#sim:drop`, `#sim:dup=N`, `#sim:late`, `#sim:envelope`, `#sim:size=BYTES`, `#sim:reject=STATUS`,
`#sim:cdn503=N`: the CDN answers the first N downloads of each output with 503), and for the persister's
failure paths: `#sim:outputs=N` (N outputs), `#sim:cdnbusy=N` (the CDN answers 503 to the first N requests of
the prediction, whichever output they ask for), `#sim:cdngone` (the output is already gone),
`#sim:redirect=HOST` (the CDN redirects to HOST), `#sim:notimage` (the output is HTML), `#sim:chunked` (no
Content-Length), `#sim:cdnslow=S` (the CDN body takes about S seconds; `#sim:slow=S` delays the create call
instead), `#sim:ratelimit=N` (`GET /v1/predictions/{id}` answers 429 with `Retry-After: 1` N times),
`#sim:answer=STATUS` and `#sim:answer=cut` (the prediction is made and runs, but the create call is answered
with that status and a page that is not JSON, or its connection closed unanswered). A create
call with `"await": true` (the official SDK's `run()`) is answered once the prediction has ended, as Skytells
does.

Its models and their input schemas (`catalog.py`) are served at `/v1/models` and enforced on every create call
(a 422 `VALIDATION_ERROR` naming the field); a reference image (`image`) is downloaded before the create call is
answered (a URL it cannot read is a 422). Outputs are real PNG, JPEG or WebP images of the asked size, made once
per size and format and varied per prediction (`png.py`, `encoded.py`), the same bytes for the same model,
prompt, input and `seed`, served by `cdn.py`, so the simulator is never what limits a measurement. What it
created, with each output's digest and the input it received, is listed at `/_sim/predictions` (`admin.py`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image

from common import log as logs
from common.predictions import SkytellsEvent, SkytellsStatus, from_skytells
from common.signing import SIGNATURE_HEADER, sign
from devstack.skytells import admin, catalog, cdn
from devstack.skytells.answers import ERROR_IDS, authorised, envelope_error, unauthorised
from devstack.skytells.model import (
    HTTP,
    OUTPUTS,
    PREDICTIONS,
    SIM_SETTINGS,
    TASKS,
    SimPrediction,
    SimSettings,
)
from devstack.skytells.png import Outputs

logger = logging.getLogger(__name__)

DIRECTIVE = re.compile(r"#sim:([a-z][a-z0-9]*)(?:=([^\s#]+))?")
CALLBACK_ATTEMPTS = 8
MAX_REFERENCE_BYTES = 32 * 1024 * 1024


async def create(request: web.Request) -> web.Response:
    if not authorised(request):
        return unauthorised()
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return envelope_error(400, "Request body must be JSON", "INVALID_PARAMETER")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return envelope_error(422, "The model field is required", "INVALID_INPUT")
    if body["model"] not in catalog.SCHEMAS:
        return envelope_error(404, f"Model {body['model']} not found", "MODEL_NOT_FOUND")
    model_input = body.get("input")
    if not isinstance(model_input, dict) or not isinstance(model_input.get("prompt"), str):
        return envelope_error(422, "input.prompt is required", "INVALID_INPUT")
    wrong = catalog.problem(body["model"], model_input)
    if wrong is not None:
        return envelope_error(422, f"Invalid input: {wrong}", "VALIDATION_ERROR")
    image: bytes | None = None
    if isinstance(model_input.get("image"), str):
        try:
            image = await _reference_image(request.app, model_input["image"])
        except ValueError as exc:
            return envelope_error(422, f"Invalid input: image: {exc}", "VALIDATION_ERROR")
    directives = {m.group(1): m.group(2) or "" for m in DIRECTIVE.finditer(model_input["prompt"])}
    if "slow" in directives:  # answer the create call late, as a loaded Skytells does (races, timeouts)
        await asyncio.sleep(_float(directives["slow"], 1.0))
    if "reject" in directives:
        status = int(directives["reject"] or 500)
        headers = {"Retry-After": "2"} if status == 429 else None
        error_id = ERROR_IDS.get(status, "INTERNAL_ERROR" if status >= 500 else "INVALID_INPUT")
        return envelope_error(status, f"Simulated rejection with HTTP {status}", error_id, headers)
    raw_webhook = body.get("webhook")
    webhook: dict[str, Any] = raw_webhook if isinstance(raw_webhook, dict) else {}
    raw_events = webhook.get("events")
    events: list[Any] = raw_events if isinstance(raw_events, list) else [SkytellsEvent.COMPLETED]
    prediction = SimPrediction(
        id=f"pred_{uuid.uuid4().hex}",
        model=body["model"],
        input=model_input,
        webhook_url=webhook.get("url") if isinstance(webhook.get("url"), str) else None,
        events=tuple(str(e) for e in events),
        directives=directives,
        image=image,
    )
    request.app[PREDICTIONS][prediction.id] = prediction
    _spawn(request.app, _run(request.app, prediction))
    if "answer" in directives:  # the prediction is made, but its answer is lost on the way back
        return _lost_answer(request, directives["answer"])
    if body.get("await") is True:  # the SDK's `run()`: answer once the prediction has ended
        await prediction.settled.wait()
    return web.json_response(prediction.view(request.app[SIM_SETTINGS].public_url), status=201)


async def _reference_image(app: web.Application, url: str) -> bytes:
    """The image behind `url`, as a model reads its reference image; ValueError when it cannot be read."""
    try:
        async with app[HTTP].get(url) as response:
            if response.status != 200:
                raise ValueError(f"the URL answered HTTP {response.status}")
            data = await response.content.read(MAX_REFERENCE_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ValueError(f"the URL could not be read ({exc.__class__.__name__})") from None
    if len(data) > MAX_REFERENCE_BYTES:
        raise ValueError("the image is too large")
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.verify()
    except (OSError, SyntaxError, ValueError):  # what Pillow raises for bytes that are not an image it knows
        raise ValueError("the URL does not hold an image") from None
    return data


def _lost_answer(request: web.Request, how: str) -> web.Response:
    """`cut`: the connection closes with no answer at all; a status: what a proxy in front of Skytells says when
    its upstream timed out, a page that is not JSON."""
    if how == "cut":
        assert request.transport is not None
        request.transport.abort()
        return web.Response()
    status = int(how) if how.isdigit() and 200 <= int(how) <= 599 else 504
    return web.Response(
        status=status, text=f"<html><body>{status} from a proxy</body></html>", content_type="text/html"
    )


async def list_predictions(request: web.Request) -> web.Response:
    """Skytells' list: newest first, `page` from 1, `per_page` 1 to 50, `from`/`to` days (inclusive)."""
    if not authorised(request):
        return unauthorised()
    query = request.query
    try:
        page, per_page = int(query.get("page", "1")), int(query.get("per_page", "50"))
        since = date.fromisoformat(query["from"]) if "from" in query else None
        until = date.fromisoformat(query["to"]) if "to" in query else None
    except ValueError:
        return envelope_error(422, "page and per_page must be integers, from and to dates", "INVALID_PARAMETER")
    if page < 1 or not 1 <= per_page <= 50:
        return envelope_error(422, "page must be at least 1 and per_page 1 to 50", "INVALID_PARAMETER")
    chosen = [
        p
        for p in request.app[PREDICTIONS].values()
        if (since is None or p.created_at.date() >= since) and (until is None or p.created_at.date() <= until)
    ]
    chosen.sort(key=lambda p: p.created_at, reverse=True)
    base = request.app[SIM_SETTINGS].public_url
    last_page = max(1, -(-len(chosen) // per_page))
    return web.json_response(
        {
            "data": [p.view(base) for p in chosen[(page - 1) * per_page : page * per_page]],
            "pagination": {"current_page": page, "per_page": per_page, "total": len(chosen), "last_page": last_page},
        }
    )


def _float(raw: str, default: float) -> float:
    try:
        return float(raw)
    except ValueError:
        return default


def _spawn(app: web.Application, coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    app[TASKS].add(task)
    task.add_done_callback(app[TASKS].discard)


async def _run(app: web.Application, prediction: SimPrediction) -> None:
    settings = app[SIM_SETTINGS]
    delay = float(prediction.directives.get("delay") or settings.delay_s)
    await asyncio.sleep(min(0.2, delay / 2))
    if prediction.status == SkytellsStatus.CANCELLED:
        return
    prediction.status = SkytellsStatus.STARTED
    prediction.started_at = datetime.now(UTC)
    started_payload = prediction.view(settings.public_url)
    if "late" not in prediction.directives:
        await _callback(app, prediction, SkytellsEvent.STARTED, started_payload)
    await asyncio.sleep(max(0.0, delay - min(0.2, delay / 2)))
    if prediction.status == SkytellsStatus.CANCELLED:
        return
    if "fail" in prediction.directives:
        prediction.error = "Simulated failure: the model could not generate this image"
        prediction.settle(SkytellsStatus.FAILED)
    else:
        outputs = await cdn.make_outputs(app, prediction)
        if prediction.canceled:  # while its outputs were being made
            return
        prediction.outputs = outputs
        prediction.output_requests = [0] * len(outputs)
        prediction.settle(SkytellsStatus.SUCCEEDED)
    final = prediction.view(settings.public_url)
    event = SkytellsEvent.COMPLETED if prediction.status == SkytellsStatus.SUCCEEDED else SkytellsEvent.FAILED
    for _ in range(max(1, int(prediction.directives.get("dup") or 1))):
        await _callback(app, prediction, event, final)
    if "late" in prediction.directives:
        await _callback(app, prediction, SkytellsEvent.STARTED, started_payload)


async def _callback(app: web.Application, prediction: SimPrediction, event: str, payload: dict[str, Any]) -> None:
    if prediction.webhook_url is None or "drop" in prediction.directives:
        return
    terminal = event != SkytellsEvent.STARTED
    if event not in prediction.events and not (terminal and SkytellsEvent.COMPLETED in prediction.events):
        return
    if "envelope" in prediction.directives:
        payload = {
            "type": f"prediction.{payload['status']}",
            "created_at": datetime.now(UTC).isoformat(),
            "data": payload,
        }
    body = json.dumps(payload).encode()
    headers = {
        "content-type": "application/json",
        SIGNATURE_HEADER: sign(body, app[SIM_SETTINGS].webhook_secret),
    }
    record: dict[str, Any] = {"event": event, "status": payload.get("status"), "answers": []}
    prediction.callbacks.append(record)
    backoff = 0.25
    for _ in range(CALLBACK_ATTEMPTS):  # Skytells retries a callback that did not get a 2xx
        try:
            async with app[HTTP].post(prediction.webhook_url, data=body, headers=headers) as response:
                record["answers"].append(response.status)
                if response.status >= 500 and not (response.status == 503 and "Retry-After" in response.headers):
                    record.setdefault("unexpected", []).append(response.status)  # the fault soak counts these
                if 200 <= response.status < 300:
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            record["answers"].append(exc.__class__.__name__)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
    logger.warning("callback for %s gave up", prediction.id, extra={"prediction_id": prediction.id})


async def get(request: web.Request) -> web.Response:
    if not authorised(request):
        return unauthorised()
    prediction = request.app[PREDICTIONS].get(request.match_info["id"])
    if prediction is None:
        # What Skytells does for an id it does not know: a 502 carrying an error_id.
        return envelope_error(502, "Prediction not found", "PREDICTION_NOT_FOUND")
    prediction.get_requests += 1
    if prediction.get_requests <= int(prediction.directives.get("ratelimit") or 0):
        return envelope_error(429, "Too many requests", "RATE_LIMIT_EXCEEDED", {"Retry-After": "1"})
    return web.json_response(prediction.view(request.app[SIM_SETTINGS].public_url))


async def cancel(request: web.Request) -> web.Response:
    if not authorised(request):
        return unauthorised()
    app = request.app
    prediction = app[PREDICTIONS].get(request.match_info["id"])
    if prediction is None:
        return envelope_error(502, "Prediction not found", "PREDICTION_NOT_FOUND")
    if not from_skytells(prediction.status).terminal:
        prediction.canceled = True
        prediction.settle(SkytellsStatus.CANCELLED)
        _spawn(app, _callback(app, prediction, SkytellsEvent.CANCELED, prediction.view(app[SIM_SETTINGS].public_url)))
    return web.json_response(prediction.view(app[SIM_SETTINGS].public_url))


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    app[HTTP] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    yield
    pending: set[asyncio.Task[None]] = app[TASKS]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await app[HTTP].close()


def create_app(settings: SimSettings) -> web.Application:
    app = web.Application()
    app[SIM_SETTINGS] = settings
    app[PREDICTIONS] = {}
    app[OUTPUTS] = Outputs()
    app[TASKS] = set()
    app.cleanup_ctx.append(_http_client)
    for prefix in ("/v1/predictions", "/v1/predict"):
        app.router.add_post(prefix, create)
    app.router.add_get("/v1/predictions", list_predictions)
    app.router.add_get("/v1/predictions/{id}", get)
    app.router.add_post("/v1/predictions/{id}/cancel", cancel)
    app.router.add_get(r"/cdn/{id}/{n:\d+}.{ext:png|jpg|webp}", cdn.serve)
    catalog.add_routes(app)
    admin.add_routes(app)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    try:
        settings = SimSettings.from_env(os.environ)
    except ValueError as exc:
        sys.exit(f"invalid simulator configuration: {exc}")
    logs.configure("skytells-sim", os.environ.get("LOG_LEVEL", "INFO"))
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)
