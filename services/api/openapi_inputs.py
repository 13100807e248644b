"""The models' part of the OpenAPI document: `GET /api/models`, a generation's `input` and `metrics`, reference
image uploads, and the month's usage in `GET /api/me`.

Kept beside `openapi.py` and merged into its document by `add_inputs`.
"""

from __future__ import annotations

from typing import Any

from services.api.openapi_common import JSON, error_response

_SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_RETRY_AFTER = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}


_INPUT = {
    "type": "object",
    "description": "The model's own options (size, number of images, seed, negative prompt, output format, a "
    "reference image...), named as its input schema (`GET /api/models`) names them; `{prompt, ...input}` must "
    "satisfy that schema, else 400 `Invalid input: <field>: <reason>`. `prompt` belongs in its own field (400 "
    'here). A value `"upload:<id>"` of one of the caller\'s uploads (`POST /api/uploads`) is sent to Skytells '
    "as a presigned URL of it. Without `input` the model's defaults apply.",
}
_METRICS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["predictTime", "creditsUsed"],
    "description": "What Skytells reported: `metrics.predict_time` (seconds) and `metadata.billing.credits_used`",
    "properties": {"predictTime": {"type": ["number", "null"]}, "creditsUsed": {"type": ["number", "null"]}},
}
_USAGE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["month", "generations", "succeeded", "images", "creditsUsed"],
    "description": "What the caller used in the current UTC month; deleted generations still count",
    "properties": {
        "month": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
        "generations": {"type": "integer", "minimum": 0, "description": "created"},
        "succeeded": {"type": "integer", "minimum": 0},
        "images": {"type": "integer", "minimum": 0, "description": "stored"},
        "creditsUsed": {"type": "number", "minimum": 0, "description": "the sum of Skytells' credits_used"},
    },
}


def add_inputs(document: dict[str, Any], allowed_models: tuple[str, ...]) -> dict[str, Any]:
    paths, schemas = document["paths"], document["components"]["schemas"]
    paths["/api/models"] = {
        "get": {
            "operationId": "listModels",
            "summary": "The allowed models and their input schemas, as Skytells publishes them",
            "security": _SECURED,
            "responses": {
                "200": {
                    "description": "In ALLOWED_MODELS order; the first is the default",
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/ModelList"}}},
                },
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "503": error_response("A model's input schema could not be read from Skytells yet", _RETRY_AFTER),
            },
        }
    }
    paths["/api/uploads"] = {
        "post": {
            "operationId": "upload",
            "summary": "Store a reference image for image-to-image",
            "description": "The body is the raw image, PNG, JPEG or WebP, recognised by its bytes (`Content-Type` "
            "is ignored), at most UPLOAD_MAX_BYTES. Stored private under `uploads/`; use its `ref` as the value of "
            "a model's image input, and Skytells receives a presigned URL of it. Only its owner can use it.",
            "security": _SECURED,
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "201": {
                    "description": "Stored",
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/Upload"}}},
                },
                "400": error_response("Not a PNG, JPEG or WebP image"),
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "413": error_response("Larger than UPLOAD_MAX_BYTES"),
                "503": error_response("Storage cannot be reached right now", _RETRY_AFTER),
            },
        }
    }
    schemas["Upload"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "ref", "contentType", "bytes"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "ref": {"type": "string", "pattern": "^upload:", "description": "`upload:<id>`, for a model's input"},
            "contentType": {"enum": ["image/png", "image/jpeg", "image/webp"]},
            "bytes": {"type": "integer", "minimum": 1},
        },
    }
    schemas["ModelList"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "default", "inputSchema"],
                    "properties": {
                        "id": {"enum": list(allowed_models)},
                        "default": {"type": "boolean"},
                        "inputSchema": {
                            "type": "object",
                            "description": "A JSON Schema (draft 2020-12) of `{prompt, ...input}`",
                        },
                    },
                },
            }
        },
    }
    schemas["GenerateRequest"]["properties"]["input"] = _INPUT
    generation = schemas["Generation"]
    generation["properties"]["input"] = {"type": "object", "description": "The request's `input`, as it was sent"}
    generation["properties"]["metrics"] = _METRICS
    generation["required"] = [*generation["required"], "input", "metrics"]
    me = schemas["Me"]
    me["properties"]["usage"] = _USAGE
    me["required"] = [*me["required"], "usage"]
    create_503 = paths["/api/generate"]["post"]["responses"]["503"]
    create_503["description"] += "; or the model's input schema could not be read from Skytells yet"
    return document
