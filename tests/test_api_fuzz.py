"""Property-based tests of the whole API against its own OpenAPI document.

- schemathesis draws requests from `GET /api/openapi.json` (valid and invalid ones) and sends them to the
  running service: no response is a 5xx, and every response (status, content type, headers, body) matches
  the document; invalid input is rejected; authentication is really enforced.
- hypothesis throws arbitrary JSON and bytes at `POST /api/generate` (with odd `input`, `webhook` and
  `webhookEventsFilter`, and `upload:` references of the caller's, of another user's and of none), raw bodies of
  every kind at `POST /api/uploads`, and ids that exist (the caller's, another user's) and do not at the routes
  that take one: never a 5xx, and every answer is one the document lists, with a body that validates against the
  schema it gives for that status.
Bounded numbers of examples keep `make test` quick; raise FUZZ_EXAMPLES for a longer run.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from common.settings import Settings
from services.api import openapi
from tests.helpers import bearer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]

DEFAULT_MODELS = Settings.from_env({}).allowed_models


@pytest.fixture(scope="module")
def fuzz_auth() -> dict[str, str]:
    return bearer(f"fuzz-{uuid.uuid4().hex}")


@pytest.fixture(scope="module")
def document(urls) -> dict[str, Any]:
    response = httpx.get(f"{urls.api}/api/openapi.json")
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def api_schema(urls):
    # Unknown query parameters are ignored, as most HTTP APIs do, so schemathesis must not add them as a way of
    # making a request invalid.
    config = SchemathesisConfig.from_dict({"generation": {"allow-extra-parameters": False}})
    return schemathesis.openapi.from_url(f"{urls.api}/api/openapi.json", config=config)


def test_document_is_valid_openapi_3_1_covering_every_route(document):
    validate_openapi(document)

    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/api/generate",
        "/api/predictions/{id}",
        "/api/predictions/{id}/cancel",
        "/api/predictions/{id}/deliveries",
        "/api/predictions/{id}/deliveries/{deliveryId}/redeliver",
        "/api/webhooks/secret",
        "/api/webhooks/secret/rotate",
        "/api/generations",
        "/api/generations/events",
        "/api/predictions/{id}/events",
        "/api/me",
        "/api/models",
        "/api/uploads",
        "/api/openapi.json",
        "/api/config",
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert set(document["components"]["schemas"]) >= {"GenerateRequest", "Generation", "GenerationPage", "Error"}


async def test_the_answers_any_route_may_give_are_documented(document, urls, http):
    # An odd Expect is a JSON 417 on every route; a checked token can meet a database or identity provider
    # that does not answer (503). The catch-all answers are written for every operation, not just some.
    response = await http.get(f"{urls.api}/api/me", headers={"Expect": "the-unexpected"})
    assert response.status_code == 417 and "error" in response.json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "417" in operation["responses"], (method, path)
            if operation.get("security"):
                assert "503" in operation["responses"], (method, path)


# (schemathesis' own pytest plugin does not run under this pytest version, so each operation and mode is
# one parametrized test driving schemathesis' hypothesis strategy directly.)
OPERATIONS = [
    (path, method.upper(), mode)
    for path, item in openapi.document(DEFAULT_MODELS)["paths"].items()
    for method, spec in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or "parameters" in spec or "requestBody" in spec  # something to break
    # An event stream stays open by design, so one answer never completes: tests/test_live_streams.py covers them.
    if "text/event-stream" not in spec["responses"].get("200", {}).get("content", {})
]


@pytest.mark.parametrize("path,method,mode", OPERATIONS, ids=[f"{m} {p} {g.value}" for p, m, g in OPERATIONS])
def test_every_response_matches_the_document(api_schema, urls, fuzz_auth, request, path, method, mode):
    operation = api_schema[path][method]
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call_and_validate(base_url=urls.api, headers=fuzz_auth, checks=CHECKS, timeout=30)
        statuses.append(response.status_code)

    check()
    request.node.user_properties.append(("cases", len(statuses)))  # in --junitxml reports: how much the fuzzing covered
    request.node.user_properties.append(("statuses", sorted(set(statuses))))
    assert statuses


# Bodies: any JSON at all, objects shaped almost like a request, and raw bytes.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_field = st.one_of(st.text(max_size=600), _json, st.sampled_from(["truefusion-pro", "truefusion-edge", " ", "\x00"]))
_webhooks = st.sampled_from(
    ["https://example.com/hook", "http://127.0.0.1:9/hook", "http://example.com/hook", "https://", "ftp://x/y"]
)
_events = st.lists(st.sampled_from(["start", "completed", "", "START"]), max_size=3)
# Prompts from every kind of character (controls, NUL and lone surrogates too).
_prompts = st.text(st.characters(categories=("L", "N", "P", "Zs", "Cc", "Cs", "So")), min_size=1, max_size=80)
_OPTIONS = ["image", "width", "seed", "num_outputs", "image_strength", "negative_prompt", "prompt", "no_such_option"]


def _inputs(refs: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """A generation's `input`: the models' options with values of any type, references among them, nested."""
    value = refs | _json | st.integers() | st.floats() | st.lists(refs, max_size=2)
    options = st.dictionaries(st.sampled_from(_OPTIONS) | st.text(max_size=8), value, max_size=4)
    return options | _json | refs | st.recursive(options, lambda inner: st.dictionaries(st.just("image"), inner))


def _generate_bodies(refs: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    almost = st.fixed_dictionaries(
        {},
        optional={
            "prompt": _field,
            "model": _field | st.just("truefusion-2.0"),
            "userId": _field,
            "input": _inputs(refs),
            "webhook": _webhooks | _field,
            "webhookEventsFilter": _events | _field,
        },
    )
    valid = st.fixed_dictionaries(
        {"prompt": _prompts},
        optional={
            "model": st.sampled_from(DEFAULT_MODELS),
            "input": st.fixed_dictionaries({}, optional={"image": refs, "seed": st.integers(0, 2**31)}),
            "webhook": _webhooks,
            "webhookEventsFilter": _events,
        },
    )
    return st.one_of(
        valid.map(lambda body: json.dumps(body).encode()),
        almost.map(lambda body: json.dumps(body).encode()),
        _json.map(lambda body: json.dumps(body).encode()),
        st.binary(max_size=300),
        st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
    )


# What an upload's first bytes may claim to be; the API takes the first three (PNG, JPEG, WebP).
_SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a", b"BM", b"<svg"]
_uploads = st.one_of(
    st.just(b""),
    st.builds(lambda signature, cut: signature[:cut], st.sampled_from(_SIGNATURES), st.integers(0, 11)),
    st.builds(bytes.__add__, st.sampled_from(_SIGNATURES), st.binary(max_size=500)),
    st.binary(max_size=500),
    # Large, within the limit: the body is read in chunks up to UPLOAD_MAX_BYTES.
    st.builds(
        lambda signature, size: signature + bytes(size), st.sampled_from(_SIGNATURES), st.sampled_from([2**16, 2**21])
    ),
)


def _response_schema(
    document: dict[str, Any], status: int, path: str = "/api/generate", method: str = "post"
) -> dict[str, Any]:
    declared = document["paths"][path][method]["responses"]
    assert str(status) in declared, f"{status} is not in the document for {method} {path}"
    response = declared[str(status)]
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return {**response["content"]["application/json"]["schema"], "components": document["components"]}


@pytest.fixture(scope="module")
def others(urls) -> dict[str, str]:
    """Another user's upload and finished generation (with a webhook, so it has a delivery)."""
    headers = bearer(f"fuzz-other-{uuid.uuid4().hex}")
    upload = httpx.post(f"{urls.api}/api/uploads", content=_SIGNATURES[0] + bytes(32), headers=headers, timeout=30)
    assert upload.status_code == 201, upload.text
    created = httpx.post(
        f"{urls.api}/api/generate",
        json={"prompt": "someone else's", "webhook": "http://127.0.0.1:9/hook"},
        headers=headers,
        timeout=30,
    )
    assert created.status_code in (200, 201, 202), created.text
    return {"ref": upload.json()["ref"], "generation": created.json()["id"]}


def _own_upload(urls, fuzz_auth) -> str:
    upload = httpx.post(f"{urls.api}/api/uploads", content=_SIGNATURES[1] + bytes(32), headers=fuzz_auth, timeout=30)
    assert upload.status_code == 201, upload.text
    return str(upload.json()["ref"])


def test_generate_never_fails_on_any_body(urls, services, document, others, request):
    seen: dict[int, int] = {}
    client = httpx.Client(base_url=urls.api, timeout=30)
    own_ref = "upload:own"  # stands for the upload of whoever is calling at that point
    refs = st.sampled_from([own_ref, others["ref"], f"upload:{uuid.uuid4()}", "upload:x"])
    callers: list[tuple[dict[str, str], str]] = []

    def caller() -> tuple[dict[str, str], str]:
        # A new user every half minute's worth of creates: the per-user limit would answer most of a long run.
        if len(callers) <= sum(seen.values()) // (services.settings.rate_limit_creates_per_minute // 2):
            headers = bearer(f"fuzz-{uuid.uuid4().hex}")
            callers.append((headers, _own_upload(urls, headers)))
        return callers[-1]

    @given(body=_generate_bodies(refs))
    @settings(max_examples=EXAMPLES * 8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(body: bytes) -> None:
        headers, ref = caller()
        body = body.replace(own_ref.encode(), ref.encode())
        response = client.post("/api/generate", content=body, headers={**headers, "Content-Type": "application/json"})
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (body, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        jsonschema.validate(response.json(), _response_schema(document, response.status_code))

    with client:
        check()
    request.node.user_properties.append(("cases", sum(seen.values())))
    request.node.user_properties.append(("statuses", seen))
    # The run is worth something only if it reached both the validation errors and success.
    assert seen.get(400, 0) > 0 and seen.get(201, 0) > 0, seen


def test_uploads_never_fail_on_any_body(urls, fuzz_auth, document, request):
    seen: dict[int, int] = {}
    client = httpx.Client(base_url=urls.api, timeout=30)

    @given(body=_uploads, content_type=st.sampled_from(["image/png", "application/octet-stream", "text/plain", ""]))
    @settings(max_examples=EXAMPLES * 2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(body: bytes, content_type: str) -> None:
        response = client.post("/api/uploads", content=body, headers={**fuzz_auth, "Content-Type": content_type})
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (body[:100], response.text)
        # The type is known from the bytes alone, whatever the header said.
        assert (response.status_code == 201) == body.startswith(tuple(_SIGNATURES[:3])), (body[:100], response.text)
        jsonschema.validate(response.json(), _response_schema(document, response.status_code, "/api/uploads"))

    with client:
        check()
    request.node.user_properties.append(("statuses", seen))
    assert seen.get(201, 0) > 0 and seen.get(400, 0) > 0, seen


# The routes that take ids, with ids of the caller's, of another user's, of none and ones that are no id at all.
_ID_ROUTES = [
    ("get", "/api/predictions/{id}/deliveries"),
    ("post", "/api/predictions/{id}/deliveries/{deliveryId}/redeliver"),
    ("delete", "/api/predictions/{id}"),
    ("get", "/api/predictions/{id}"),
    ("post", "/api/predictions/{id}/cancel"),
    ("get", "/api/webhooks/secret"),
    ("post", "/api/webhooks/secret/rotate"),
    ("get", "/api/models"),
]


def test_routes_with_ids_never_fail_whoever_owns_the_id(urls, fuzz_auth, document, others, request):
    created = httpx.post(
        f"{urls.api}/api/generate",
        json={"prompt": "fuzzed by id", "webhook": "http://127.0.0.1:9/hook", "webhookEventsFilter": ["start"]},
        headers=fuzz_auth,
        timeout=30,
    )
    assert created.status_code in (200, 201, 202), created.text
    own = created.json()["id"]
    deadline = time.monotonic() + 20
    while not (items := httpx.get(f"{urls.api}/api/predictions/{own}/deliveries", headers=fuzz_auth).json()["items"]):
        assert time.monotonic() < deadline, "the generation's start was never recorded for delivery"
        time.sleep(0.1)
    ids = st.sampled_from(
        [own, items[0]["id"], others["generation"], str(uuid.uuid4()), "not-an-id", "%00", own.upper()]
    )
    seen: dict[tuple[str, int], int] = {}
    client = httpx.Client(base_url=urls.api, timeout=30)

    @given(route=st.sampled_from(_ID_ROUTES), generation=ids, delivery=ids | st.text(max_size=40))
    @settings(max_examples=EXAMPLES * 2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(route: tuple[str, str], generation: str, delivery: str) -> None:
        method, template = route
        if method == "delete" and generation.lower() == own:
            generation = str(uuid.uuid4())  # the caller's generation stays for the other routes
        path = template.replace("{id}", generation).replace("{deliveryId}", quote(delivery, safe=""))
        response = client.request(method, path, headers=fuzz_auth)
        seen[(template, response.status_code)] = seen.get((template, response.status_code), 0) + 1
        assert response.status_code < 500, (method, path, response.text)
        jsonschema.validate(response.json(), _response_schema(document, response.status_code, template, method))

    with client:
        check()
    request.node.user_properties.append(("statuses", sorted(seen.items())))
    statuses = {status for _, status in seen}
    assert 200 in statuses and 404 in statuses, seen
