"""The live part of the OpenAPI document: event streams, `Prefer: wait`, `GET /api/me`.

Kept beside `openapi.py` and merged into its document by `add_live`.
"""

from __future__ import annotations

from typing import Any

from services.api.bodies import MAX_WAIT_S, PREFER_HEADER
from services.api.live.sse import EVENT_STREAM, KEEPALIVE_S, LAST_EVENT_ID_HEADER
from services.api.openapi_common import JSON

_SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}]

_PREFER = {
    "name": PREFER_HEADER,
    "in": "header",
    "required": False,
    "description": f"`wait` or `wait=N` (1 to {MAX_WAIT_S}; default and largest {MAX_WAIT_S}): answer once the "
    "generation has ended or N seconds have passed, with the generation as it stands then and "
    "`Preference-Applied: wait=N`. A preference that cannot be read is ignored (RFC 7240).",
    "schema": {"type": "string"},
}

_LAST_EVENT_ID = {
    "name": LAST_EVENT_ID_HEADER,
    "in": "header",
    "required": False,
    "description": "The `id` of the last event received, sent back when reconnecting; anything else is a 400.",
    "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
}

_STREAM_FORMAT = (
    "`text/event-stream`: each event is `event: generation`, an `id:` line and `data:` the generation object on "
    f"one line; a `: keep-alive` comment at least every {KEEPALIVE_S:g} s while idle."
)


def _stream(summary: str, description: str, operation_id: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": f"{description} {_STREAM_FORMAT}",
            "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
        },
        "400": {"$ref": "#/components/responses/BadRequest"},
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "429": {
            "description": "The caller already has STREAMS_PER_USER streams open on this API replica",
            "headers": {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
    }
    if any(p["in"] == "path" for p in parameters):
        responses["404"] = {"$ref": "#/components/responses/NotFound"}
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "security": _SECURED,
            "parameters": parameters,
            "responses": responses,
        }
    }


def add_live(document: dict[str, Any], id_parameter: dict[str, Any]) -> dict[str, Any]:
    paths = document["paths"]
    generate = paths["/api/generate"]["post"]
    generate["parameters"].append(_PREFER)
    for status in ("200", "201"):
        generate["responses"][status].setdefault("headers", {})["Preference-Applied"] = {
            "$ref": "#/components/headers/PreferenceApplied"
        }
    paths["/api/predictions/{id}/events"] = _stream(
        "Live events of one generation",
        "First its current state, then one event per change; closed after the terminal one.",
        "generationEvents",
        [id_parameter, _LAST_EVENT_ID],
    )
    paths["/api/generations/events"] = _stream(
        "Live events of all the caller's generations",
        "First one event per unfinished generation (after a `Last-Event-ID`, also what changed since), then one "
        "per change of any of the caller's generations. Stays open. A client that stops reading is disconnected "
        "once a write has waited 30 s.",
        "userEvents",
        [_LAST_EVENT_ID],
    )
    paths["/api/me"] = {
        "get": {
            "operationId": "me",
            "summary": "The caller and their quota use",
            "security": _SECURED,
            "responses": {
                "200": {
                    "description": "The caller",
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/Me"}}},
                },
                "401": {"$ref": "#/components/responses/Unauthorized"},
            },
        }
    }
    components = document["components"]
    components["headers"]["PreferenceApplied"] = {
        "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
        "description": "Present when `Prefer: wait` was honoured: how long the answer could be held",
    }
    components["schemas"]["Me"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["userId", "activeGenerations", "quota"],
        "properties": {
            "userId": {"type": "string"},
            "activeGenerations": {"type": "integer", "minimum": 0, "description": "`queued` or `processing`"},
            "quota": {"type": "integer", "minimum": 1, "description": "QUOTA_MAX_ACTIVE"},
        },
    }
    return document
