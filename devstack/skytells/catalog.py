"""The simulator's models and their input schemas (JSON Schema 2020-12), as Skytells publishes them at
`GET /v1/models` and `GET /v1/models/{slug}?fields=input_schema`, and the check of a create call's input
against them (a 422 `VALIDATION_ERROR`, as Skytells answers).

Studio reads these schemas; it holds no copy of them, so a model or an option added here needs no change there.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web
from jsonschema import Draft202012Validator

from common import inputs
from devstack.skytells.answers import authorised, envelope_error, unauthorised
from devstack.skytells.model import CREDITS_PER_IMAGE

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _size(largest: int, name: str) -> dict[str, Any]:
    return {
        "type": "integer",
        "title": name.capitalize(),
        "description": f"{name.capitalize()} of each image in pixels, a multiple of 64",
        "minimum": 256,
        "maximum": largest,
        "multipleOf": 64,
        "default": 1024,
    }


_PROMPT = {"type": "string", "title": "Prompt", "minLength": 1, "maxLength": 500}
_SEED = {
    "type": "integer",
    "title": "Seed",
    "description": "The same seed, prompt and options give the same image",
    "minimum": 0,
    "maximum": 4294967295,
}
_FORMAT = {"type": "string", "title": "Output format", "enum": ["png", "jpeg", "webp"], "default": "png"}


def _schema(title: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "title": title,
        "type": "object",
        "properties": {"prompt": _PROMPT, **properties},
        "required": ["prompt"],
        "additionalProperties": False,
    }


_PRO = {
    "negative_prompt": {
        "type": "string",
        "title": "Negative prompt",
        "description": "What the image should not show",
        "maxLength": 500,
    },
    "width": _size(2048, "width"),
    "height": _size(2048, "height"),
    "num_outputs": {
        "type": "integer",
        "title": "Number of images",
        "minimum": 1,
        "maximum": 4,
        "default": 1,
    },
    "seed": _SEED,
    "output_format": _FORMAT,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "truefusion-pro": _schema("TrueFusion Pro input", _PRO),
    "truefusion-edge": _schema(
        "TrueFusion Edge input",
        {"width": _size(1024, "width"), "height": _size(1024, "height"), "seed": _SEED, "output_format": _FORMAT},
    ),
    "truefusion-2.0": _schema(
        "TrueFusion 2.0 input",
        {
            **_PRO,
            "image": {
                "type": "string",
                "title": "Reference image",
                "description": "URL of an image to start from",
                "format": "uri",
            },
            "image_strength": {
                "type": "number",
                "title": "Image strength",
                "description": "How closely the result follows the reference image",
                "minimum": 0,
                "maximum": 1,
                "default": 0.6,
            },
        },
    ),
}
for _schema_of_model in SCHEMAS.values():
    Draft202012Validator.check_schema(_schema_of_model)
VALIDATORS = {slug: Draft202012Validator(schema) for slug, schema in SCHEMAS.items()}


def problem(model: str, model_input: dict[str, Any]) -> str | None:
    """`field: reason` for the first violation of the model's schema, or None when the input is valid."""
    return inputs.problem(VALIDATORS[model], model_input)


def with_defaults(model: str, model_input: dict[str, Any]) -> dict[str, Any]:
    """The input with every default of the schema the input leaves out filled in."""
    properties = SCHEMAS[model]["properties"]
    defaults = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
    return {**defaults, **model_input}


def _model(slug: str, fields: set[str]) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": slug,
        "namespace": slug,
        "type": "image",
        "privacy": "public",
        "pricing": {"amount": CREDITS_PER_IMAGE, "unit": "image"},
    }
    if "input_schema" in fields:
        described["input_schema"] = copy.deepcopy(SCHEMAS[slug])
    return described


def _fields(request: web.Request) -> set[str]:
    return {part.strip() for part in request.query.get("fields", "").split(",") if part.strip()}


async def list_models(request: web.Request) -> web.Response:
    if not authorised(request):
        return unauthorised()
    fields = _fields(request)
    return web.json_response([_model(slug, fields) for slug in SCHEMAS])


async def get_model(request: web.Request) -> web.Response:
    if not authorised(request):
        return unauthorised()
    slug = request.match_info["slug"]
    if slug not in SCHEMAS:
        return envelope_error(404, f"Model {slug} not found", "MODEL_NOT_FOUND")
    return web.json_response(_model(slug, _fields(request)))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{slug}", get_model)
