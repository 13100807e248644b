"""The default model is the first of ALLOWED_MODELS wherever the API says which it is: a create without `model`,
the page's configuration and the OpenAPI document, for a list that does not start with the usual default."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from devstack.processes import free_port
from devstack.stack import Stack

MODELS = ("truefusion-edge", "truefusion-2.0")


@pytest.fixture(scope="module")
async def api(services: Stack) -> AsyncIterator[str]:
    port = free_port()
    env = {"API_PORT": str(port), "ALLOWED_MODELS": ",".join(MODELS)}
    process = await asyncio.to_thread(services.start_service, "api", env, "api-default-model")
    yield f"http://127.0.0.1:{port}"
    await asyncio.to_thread(process.stop)


async def test_a_create_without_a_model_gets_the_first_allowed(http, api, auth):
    response = await http.post(f"{api}/api/generate", json={"prompt": "a lighthouse"}, headers=auth)

    assert response.status_code == 201, response.text
    assert response.json()["model"] == MODELS[0]


async def test_the_page_and_the_openapi_document_name_the_same_default(http, api):
    config = (await http.get(f"{api}/api/config")).json()
    document = (await http.get(f"{api}/api/openapi.json")).json()

    assert config["defaultModel"] == MODELS[0] and config["models"] == list(MODELS)
    model = document["components"]["schemas"]["GenerateRequest"]["properties"]["model"]
    assert model["default"] == MODELS[0] and model["enum"] == list(MODELS)
