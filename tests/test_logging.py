"""Service logs: one JSON object per line, and one generation followed across api -> webhook -> persister by
the ids on its lines."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid

import httpx
import pytest

from common.access_log import AccessLog
from common.log import JsonFormatter
from tests.helpers import eventually, wait_for_status

SERVICES = ("api", "webhook", "persister")
REQUIRED = ("ts", "level", "service", "logger", "message")


def _lines(stack, label: str) -> list[dict]:
    path = stack.work_dir / "logs" / f"{label}.log"
    lines = []
    # Lines end at "\n" only: `splitlines` would also cut at U+0085 or U+2028, which JSON writes raw.
    for number, raw in enumerate(path.read_text().split("\n")[:-1], 1):
        try:
            line = json.loads(raw)
        except ValueError:
            raise AssertionError(f"{label}.log line {number} is not JSON: {raw!r}") from None
        assert isinstance(line, dict), raw
        missing = [field for field in REQUIRED if not line.get(field)]
        assert not missing, f"{label}.log line {number} lacks {missing}: {raw}"
        assert line["service"] == label
        assert line["level"] in ("debug", "info", "warning", "error", "critical")
        lines.append(line)
    return lines


async def _wait_for_lines(stack, label: str, wanted) -> list[dict]:
    """The row is updated just before the line is written: give the log a moment to catch up. Matching is on
    fields, not message texts, which the services are free to reword."""
    lines: list[dict] = []

    def arrived() -> bool:
        lines[:] = _lines(stack, label)
        return any(wanted(line) for line in lines)

    await eventually(f"a matching {label} log line", arrived, timeout=10)
    return lines


async def test_one_generation_is_followed_across_the_services_by_its_ids(services, urls, http, auth, db):
    request_id = f"logtest-{uuid.uuid4().hex}"
    response = await http.post(
        f"{urls.api}/api/generate",
        json={"prompt": "a lantern in the fog #sim:dup=2"},
        headers={**auth, "X-Request-Id": request_id},
    )
    assert response.status_code == 201, response.text
    assert response.headers["X-Request-Id"] == request_id
    generation_id = response.json()["id"]
    assert (await wait_for_status(http, urls.api, generation_id, auth))["status"] == "succeeded"
    prediction_id = await db.fetchval("SELECT prediction_id FROM generations WHERE id = $1::uuid", generation_id)

    # API: the client's request id, our generation id and Skytells' prediction id on one line.
    api = [line for line in _lines(services, "api") if line.get("generation_id") == generation_id]
    assert any(line.get("prediction_id") == prediction_id and line.get("request_id") == request_id for line in api), api

    # Gateway: its lines about the callbacks name the prediction, under the gateway's own request ids.
    webhook = [
        line
        for line in await _wait_for_lines(services, "webhook", lambda line: line.get("prediction_id") == prediction_id)
        if line.get("prediction_id") == prediction_id
    ]
    assert webhook, "the gateway logged nothing about the prediction"
    gateway_request_ids = {line.get("request_id") for line in webhook}
    assert None not in gateway_request_ids and request_id not in gateway_request_ids, webhook

    # Persister: the gateway's request id travelled inside the event; the generation id is added once found.
    def about_generation(line: dict) -> bool:
        return line.get("prediction_id") == prediction_id and line.get("generation_id") == generation_id

    persister = [
        line
        for line in await _wait_for_lines(services, "persister", about_generation)
        if line.get("prediction_id") == prediction_id
    ]
    assert any(about_generation(line) for line in persister), persister
    assert {line.get("request_id") for line in persister} <= gateway_request_ids, persister

    # The consumer's per-event outcome lines (they carry `attempt`) are written outside the block that found the
    # generation, and still name it.
    def outcome(line: dict) -> bool:
        return line.get("prediction_id") == prediction_id and "attempt" in line

    outcomes = [line for line in await _wait_for_lines(services, "persister", outcome) if outcome(line)]
    assert outcomes and all(line.get("generation_id") == generation_id for line in outcomes), outcomes

    # Any line that mentions either id in its text carries it as a field too, so a filter on fields misses none.
    for label in SERVICES:
        for line in _lines(services, label):
            text = json.dumps(line)
            if generation_id in line["message"]:
                assert line.get("generation_id") == generation_id, line
            if prediction_id in line["message"]:
                assert line.get("prediction_id") == prediction_id, line
            if generation_id in text or prediction_id in text:
                assert generation_id == line.get("generation_id") or prediction_id == line.get("prediction_id"), text


SCRIPT = """
import logging, warnings
from common import log
log.configure("probe")
logger = logging.getLogger("probe.module")
log.annotate(generation_id="leak")  # outside any block: must not stick to later lines
with log.bind(prediction_id="p-1", request_id="r-1"):
    with log.bind(event_id="e-1"):
        logger.info("inner %s", "line", extra={"attempt": 2})
    log.annotate(generation_id="g-1")
    logger.info("after annotate")
logger.info("outside")
warnings.warn("a deprecated thing", DeprecationWarning)
raise RuntimeError("boom")
"""


def test_every_line_a_process_writes_is_json_even_warnings_and_crashes():
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", SCRIPT], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1
    assert done.stderr == ""  # nothing escapes as plain text
    lines = [json.loads(raw) for raw in done.stdout.splitlines()]
    assert [line["message"] for line in lines[:3]] == ["inner line", "after annotate", "outside"]
    assert all(line["service"] == "probe" and line["ts"] for line in lines)
    inner, annotated, outside, warned, crash = lines
    assert inner["prediction_id"] == "p-1" and inner["event_id"] == "e-1" and inner["attempt"] == 2
    assert annotated["generation_id"] == "g-1" and annotated["request_id"] == "r-1" and "event_id" not in annotated
    assert not {"generation_id", "prediction_id", "request_id"} & set(outside)
    assert warned["level"] == "warning" and "a deprecated thing" in warned["message"]
    assert crash["level"] == "critical" and "RuntimeError: boom" in crash["exc_info"]


async def test_every_request_gets_one_access_line_refused_ones_included(services, urls, http, auth):
    persister = f"http://127.0.0.1:{services.env['PERSISTER_PORT']}"
    cases = [
        ("api", "GET", f"{urls.api}/api/generations", {}, 401),
        ("api", "GET", f"{urls.api}/api/no-such-thing", {}, 404),
        ("api", "POST", f"{urls.api}/api/generate", {"content": b"not json", "headers": auth}, 400),
        ("api", "GET", f"{urls.api}/api/generations", {"headers": auth}, 200),
        ("webhook", "POST", f"{urls.webhook}/api/webhooks", {"content": b"{}"}, 401),
        ("persister", "GET", f"{persister}/healthz", {}, 200),
    ]
    sent = []
    for label, method, url, kwargs, status in cases:
        request_id = f"access-{uuid.uuid4().hex}"
        headers = {**kwargs.pop("headers", {}), "X-Request-Id": request_id}
        response = await http.request(method, url, headers=headers, **kwargs)
        assert response.status_code == status, response.text
        sent.append((label, method, httpx.URL(url).path, status, request_id))

    for label, method, path, status, request_id in sent:

        def mine(line: dict, request_id: str = request_id) -> bool:
            return line["logger"] == "studio.access" and line.get("request_id") == request_id

        lines = [line for line in await _wait_for_lines(services, label, mine) if mine(line)]
        assert len(lines) == 1, (label, path, lines)
        line = lines[0]
        assert (line["method"], line["path"], line["status"]) == (method, path, status), line
        assert line["message"] == f"{method} {path} {status}" and line["level"] == "info"
        assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0


async def test_a_request_too_malformed_to_parse_still_gets_an_access_line(services):
    def refused(line: dict) -> bool:
        return line["logger"] == "studio.access" and line["status"] == 400 and line.get("request_id") is None

    before = sum(refused(line) for line in _lines(services, "webhook"))
    reader, writer = await asyncio.open_connection("127.0.0.1", int(services.env["WEBHOOK_PORT"]))
    writer.write(b"POST /api/webhooks HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1:2] == [b"400"], status_line
    count = await eventually(
        "an access line for the refused request",
        lambda: sum(refused(line) for line in _lines(services, "webhook")) - before,
        timeout=10,
    )
    assert count == 1


def test_access_lines_cost_nothing_when_the_level_filters_them_out():
    quiet = logging.getLogger(f"access-probe-{uuid.uuid4().hex}")
    quiet.setLevel(logging.WARNING)
    # aiohttp asks this once per connection and then neither times requests nor calls `log`.
    assert not AccessLog(quiet, "").enabled
    quiet.setLevel(logging.INFO)
    assert AccessLog(quiet, "").enabled


BUFFERED = """
import asyncio, json, logging, sys
from common import log
writes = []
class Counting:
    def write(self, text):
        writes.append(text)
        return len(text)
    def flush(self):
        pass
counting = Counting()
log.configure("probe")
sys.excepthook = sys.__excepthook__  # a failed assertion here is reported on stderr, not into `writes`
logging.getLogger().handlers[0].setStream(counting)
logger = logging.getLogger("probe")

async def turn():
    for n in range(3):
        logger.info("line %d", n)
    log.line_writer("studio.access")("GET / 200", {"status": 200})
    assert writes == [], writes  # held until the turn ends
    logger.error("urgent")
    assert len(writes) == 1 and writes[0].count("\\n") == 5, writes  # an error takes the held lines with it
    logger.info("later")
    await asyncio.sleep(0)
    assert len(writes) == 2, writes

asyncio.run(turn())
loop = asyncio.new_event_loop()

def last() -> None:
    logger.info("left behind when the loop stops")
    loop.stop()  # before the flush this line scheduled can run

loop.call_soon(last)
loop.run_forever()
loop.close()
assert len(writes) == 2, writes
logger.info("outside a loop")
assert len(writes) == 3 and writes[2].count("\\n") == 2, writes  # the line a stopped loop left is not lost
lines = [json.loads(raw) for chunk in writes for raw in chunk.splitlines()]
assert [line["message"] for line in lines] == [
    "line 0", "line 1", "line 2", "GET / 200", "urgent", "later", "left behind when the loop stops", "outside a loop"
]
access = lines[3]
assert access["logger"] == "studio.access" and access["level"] == "info" and access["status"] == 200
assert access["service"] == "probe" and access["ts"]
quiet = logging.getLogger("studio.access")
quiet.setLevel(logging.WARNING)
assert log.line_writer("studio.access") is None  # filtered out: no writer, so nothing bypasses the level
quiet.setLevel(logging.INFO)
quiet.propagate = False
assert log.line_writer("studio.access") is None  # its lines would not reach the root's handler either
print("ok", file=sys.stderr)
"""


def test_lines_of_one_loop_turn_go_out_in_one_write_and_errors_at_once():
    done = subprocess.run([sys.executable, "-c", BUFFERED], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and done.stderr.strip() == "ok", done.stderr


@pytest.mark.parametrize("text", ["next\x85line", "para\u2028graph", "page\u2029break", "surrogate \ud800 and \x85"])
def test_a_line_break_inside_a_field_never_splits_the_line(text):
    # A request path or a prompt with NEL or a Unicode line separator split an access line in two for every
    # reader that takes those as line ends (str.splitlines among them).
    line = JsonFormatter("probe").line(0.0, "info", "studio.access", text, {"path": text})
    assert line.splitlines() == [line]
    assert json.loads(line)["path"] == text and json.loads(line)["message"] == text
