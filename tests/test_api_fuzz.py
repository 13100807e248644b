"""Property-based tests of the whole API against its own OpenAPI document.

- schemathesis draws requests from `GET /api/openapi.json` (valid and invalid ones) and sends them to the
  running service: no response is a 5xx, and every response (status, content type, headers, body) matches
  the document; invalid input is rejected; authentication is really enforced.
- hypothesis throws arbitrary JSON and bytes at `POST /api/generate`: never a 5xx, and every answer is one the
  document lists, with a body that validates against the schema it gives for that status.
Bounded numbers of examples keep `make test` quick; raise FUZZ_EXAMPLES for a longer run.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

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
_almost = st.fixed_dictionaries({}, optional={"prompt": _field, "model": _field, "userId": _field})
# Mostly valid requests, with prompts from every kind of character (controls, NUL and lone surrogates too).
_prompts = st.text(st.characters(categories=("L", "N", "P", "Zs", "Cc", "Cs", "So")), min_size=1, max_size=80)
_valid = st.fixed_dictionaries({"prompt": _prompts}, optional={"model": st.sampled_from(DEFAULT_MODELS)})
_bodies = st.one_of(
    _valid.map(lambda body: json.dumps(body).encode()),
    _almost.map(lambda body: json.dumps(body).encode()),
    _json.map(lambda body: json.dumps(body).encode()),
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


def _response_schema(document: dict[str, Any], status: int) -> dict[str, Any]:
    declared = document["paths"]["/api/generate"]["post"]["responses"]
    assert str(status) in declared, f"{status} is not in the document"
    response = declared[str(status)]
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return {**response["content"]["application/json"]["schema"], "components": document["components"]}


def test_generate_never_fails_on_any_body(urls, fuzz_auth, document, request):
    seen: dict[int, int] = {}

    @given(body=_bodies)
    @settings(max_examples=EXAMPLES * 8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(body: bytes) -> None:
        response = httpx.post(
            f"{urls.api}/api/generate",
            content=body,
            headers={**fuzz_auth, "Content-Type": "application/json"},
            timeout=30,
        )
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (body, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        jsonschema.validate(response.json(), _response_schema(document, response.status_code))

    check()
    request.node.user_properties.append(("cases", sum(seen.values())))
    request.node.user_properties.append(("statuses", seen))
    # The run is worth something only if it reached both the validation errors and success.
    assert seen.get(400, 0) > 0 and seen.get(201, 0) + seen.get(429, 0) > 0, seen
