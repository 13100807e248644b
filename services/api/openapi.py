"""The OpenAPI 3.1 document of the API, served at `GET /api/openapi.json`.

Written by hand next to the handlers it describes, and checked against the running service by the
schemathesis and hypothesis tests, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from common.db.deliveries import DEFAULT_EVENTS, EVENTS, DeliveryStatus
from common.predictions import Status
from services.api.bodies import IDEMPOTENCY_HEADER, MAX_IDEMPOTENCY_KEY, MAX_PROMPT, MAX_WEBHOOK_URL
from services.api.openapi_common import JSON, error_response
from services.api.openapi_inputs import add_inputs
from services.api.openapi_live import add_live
from services.api.paging import DEFAULT_LIMIT, MAX_LIMIT


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{name}"}


def _generation(description: str, location: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Generation"}}},
    }
    if location:
        response["headers"] = {"Location": {"$ref": "#/components/headers/Location"}}
    return response


_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "Studio's generation id. Unknown, malformed and other users' ids all answer the same 404.",
    "schema": {"type": "string", "format": "uuid"},
}


def document(allowed_models: tuple[str, ...]) -> dict[str, Any]:
    live = add_live(_document(allowed_models), _ID_PARAMETER)
    return _answers_of_every_route(add_inputs(live, allowed_models))


_UNAVAILABLE = (
    "the database, or the identity provider's keys (`AUTH_JWKS_URL`), cannot be reached right now: retry after"
    " Retry-After"
)


def _answers_of_every_route(document: dict[str, Any]) -> dict[str, Any]:
    """What any operation may answer besides its own: 417 for an `Expect` other than `100-continue`, and, where a
    token is checked, 503 while the database or the identity provider's keys cannot be read."""
    for path_item in document["paths"].values():
        for operation in path_item.values():
            responses = operation["responses"]
            responses.setdefault("417", _ref("ExpectationFailed"))
            if not operation.get("security"):  # public routes say `security: []`
                continue
            if "503" in responses:
                own = responses["503"]["description"]
                responses["503"] = {**responses["503"], "description": f"{own}; or {_UNAVAILABLE}"}
            else:
                responses["503"] = _ref("Unavailable")
    return document


def _document(allowed_models: tuple[str, ...]) -> dict[str, Any]:
    retry_after = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    secured: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Studio API",
            "version": "1.0.0",
            "description": 'AI image generation on Skytells. Every error is `{"error": message}`.',
        },
        "paths": {
            "/api/generate": {
                "post": {
                    "operationId": "generate",
                    "summary": "Ask for an image",
                    "security": secured,
                    "parameters": [
                        {
                            "name": IDEMPOTENCY_HEADER,
                            "in": "header",
                            "required": False,
                            "description": "A repeat with the same key by the same user answers 200 with the "
                            "first generation, without a second prediction; the same key with another body: 409.",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_IDEMPOTENCY_KEY,
                                "pattern": "^[\\x21-\\x7E]([\\x20-\\x7E]*[\\x21-\\x7E])?$",
                            },
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}},
                    },
                    "responses": {
                        "201": _generation("Created; Skytells accepted the prediction", location=True),
                        "200": _generation("A repeat of an earlier request with the same Idempotency-Key", True),
                        "400": _ref("BadRequest"),
                        "401": _ref("Unauthorized"),
                        "403": error_response("`userId` is not the authenticated user"),
                        "409": error_response(
                            "Idempotency-Key reused with another body, or its first request is still in progress",
                            retry_after,
                        ),
                        "413": error_response("Body over 64 KiB"),
                        "429": error_response(
                            "`Rate limit exceeded`: more than RATE_LIMIT_CREATES_PER_MINUTE calls by this user in a"
                            " minute, across every replica (Retry-After says when the next is allowed); or `Quota"
                            " exceeded`: QUOTA_MAX_ACTIVE generations already queued or processing",
                            retry_after,
                        ),
                        "502": error_response("Skytells failed the call; its message when it gave one"),
                        "503": error_response(
                            "Skytells is rate-limiting Studio; or it did not answer in time (the generation stays"
                            " queued for its callback: repeat with the same Idempotency-Key to get it); or Studio"
                            " could not record the prediction (it was canceled): retry after Retry-After",
                            retry_after,
                        ),
                    },
                }
            },
            "/api/predictions/{id}": {
                "get": {
                    "operationId": "getPrediction",
                    "summary": "One of the caller's generations",
                    "security": secured,
                    "parameters": [_ID_PARAMETER],
                    "responses": {
                        "200": _generation("The generation"),
                        "401": _ref("Unauthorized"),
                        "404": _ref("NotFound"),
                    },
                },
                "delete": {
                    "operationId": "deletePrediction",
                    "summary": "Delete a finished generation and its stored outputs",
                    "description": (
                        "Its objects are deleted first, then the generation: afterwards it is gone from every"
                        " endpoint (404, not listed, not streamed), any URL to its outputs fails, and its pending"
                        " webhook deliveries are dropped. A repeat after success is a 404."
                    ),
                    "security": secured,
                    "parameters": [_ID_PARAMETER],
                    "responses": {
                        "204": {"description": "Deleted"},
                        "401": _ref("Unauthorized"),
                        "404": _ref("NotFound"),
                        "409": error_response("The generation is unfinished: cancel it first"),
                        "503": error_response(
                            "Storage could not delete its outputs: nothing was deleted, retry after Retry-After",
                            retry_after,
                        ),
                    },
                },
            },
            "/api/predictions/{id}/cancel": {
                "post": {
                    "operationId": "cancelPrediction",
                    "summary": "Ask Skytells to cancel an unfinished generation",
                    "security": secured,
                    "parameters": [_ID_PARAMETER],
                    "responses": {
                        "200": _generation("The generation; `canceled` once Skytells agreed"),
                        "401": _ref("Unauthorized"),
                        "404": _ref("NotFound"),
                        "409": error_response("Already finished, or still being submitted", retry_after),
                        "502": error_response("Skytells failed the call; its message when it gave one"),
                        "503": error_response("Skytells is rate-limiting Studio", retry_after),
                    },
                }
            },
            "/api/predictions/{id}/deliveries": {
                "get": {
                    "operationId": "listDeliveries",
                    "summary": "The generation's webhook deliveries, oldest first",
                    "security": secured,
                    "parameters": [_ID_PARAMETER],
                    "responses": {
                        "200": {
                            "description": "Its deliveries (none unless it was created with a `webhook`)",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/DeliveryPage"}}},
                        },
                        "401": _ref("Unauthorized"),
                        "404": _ref("NotFound"),
                    },
                }
            },
            "/api/predictions/{id}/deliveries/{deliveryId}/redeliver": {
                "post": {
                    "operationId": "redeliver",
                    "summary": "Send a delivery again, with the same `webhook-id`",
                    "security": secured,
                    "parameters": [
                        _ID_PARAMETER,
                        {
                            "name": "deliveryId",
                            "in": "path",
                            "required": True,
                            "description": "The delivery's id (its `webhook-id`).",
                            "schema": {"type": "string", "format": "uuid"},
                        },
                    ],
                    "responses": {
                        "202": {
                            "description": "Pending again",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Delivery"}}},
                        },
                        "401": _ref("Unauthorized"),
                        "404": error_response("No such generation for this user, or no such delivery of it"),
                        "409": error_response("The delivery is pending already"),
                    },
                }
            },
            "/api/webhooks/secret": {
                "get": {
                    "operationId": "webhookSecret",
                    "summary": "The caller's webhook signing key (made on first use)",
                    "security": secured,
                    "responses": {
                        "200": _secret("The key that signs the caller's webhooks"),
                        "401": _ref("Unauthorized"),
                    },
                }
            },
            "/api/webhooks/secret/rotate": {
                "post": {
                    "operationId": "rotateWebhookSecret",
                    "summary": "Replace the caller's signing key; the old one keeps signing too for a while",
                    "security": secured,
                    "responses": {"200": _secret("The new key"), "401": _ref("Unauthorized")},
                }
            },
            "/api/generations": {
                "get": {
                    "operationId": "listGenerations",
                    "summary": "The caller's generations, newest first",
                    "security": secured,
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "required": False,
                            "description": "Opaque: the `nextCursor` of the previous page (empty: the first page).",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of generations",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/GenerationPage"}}},
                        },
                        "400": _ref("BadRequest"),
                        "401": _ref("Unauthorized"),
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}
                    },
                }
            },
            "/api/config": {
                "get": {
                    "operationId": "config",
                    "summary": "What a client may ask for: the allowed models, the default one, the prompt limit",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The page reads this before it offers the generate form",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Config"}}},
                        }
                    },
                }
            },
            "/": {
                "get": {
                    "operationId": "page",
                    "summary": "Studio's web page (its script and stylesheet are under /static/)",
                    "security": [],
                    "responses": {"200": {"description": "The page", "content": {"text/html": {"schema": {}}}}},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "200 while the process runs",
                    "security": [],
                    "responses": {"200": _probe("The process runs")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "200 when PostgreSQL answers",
                    "security": [],
                    "responses": {"200": _probe("Ready"), "503": _probe("A dependency does not answer")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus text format",
                    "security": [],
                    "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {}}}}},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "headers": {
                "Location": {"schema": {"type": "string"}, "description": "`/api/predictions/{id}`"},
                "RetryAfter": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "description": "Seconds"},
            },
            "responses": {
                "BadRequest": error_response("Invalid input; the message names the field"),
                "Unauthorized": error_response(
                    "Bearer token missing, malformed, expired or wrongly signed",
                    {"WWW-Authenticate": {"schema": {"type": "string"}}},
                ),
                "NotFound": error_response("No such generation for this user"),
                "ExpectationFailed": error_response("An `Expect` header other than `100-continue`"),
                "Unavailable": error_response(_UNAVAILABLE[0].upper() + _UNAVAILABLE[1:], retry_after),
            },
            "schemas": {
                "GenerateRequest": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        "prompt": {
                            "type": "string",
                            "minLength": 1,
                            "description": f"1 to {MAX_PROMPT} characters after trimming surrounding whitespace.",
                        },
                        "model": {"type": "string", "enum": list(allowed_models), "default": allowed_models[0]},
                        "userId": {"type": "string", "description": "Optional; must equal the token's `sub` (403)."},
                        "webhook": {
                            "type": "string",
                            "maxLength": MAX_WEBHOOK_URL,
                            "description": "An absolute `https://` URL (or `http://` for a host in NOTIFY_ALLOW_HOSTS)"
                            " told of the generation's changes, signed as Standard Webhooks; else 400.",
                        },
                        "webhookEventsFilter": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"enum": [str(event) for event in EVENTS]},
                            "default": [str(event) for event in DEFAULT_EVENTS],
                            "description": "Which changes are told: `start` (processing), `completed` (terminal).",
                        },
                    },
                },
                "Generation": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "id",
                        "status",
                        "model",
                        "prompt",
                        "outputUrl",
                        "outputUrls",
                        "error",
                        "webhook",
                        "webhookEventsFilter",
                        "createdAt",
                        "completedAt",
                    ],
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "status": {"enum": [str(status) for status in Status]},
                        "model": {"type": "string"},
                        "prompt": {"type": "string"},
                        "outputUrl": {
                            "type": ["string", "null"],
                            "description": (
                                "The first output: with S3_OUTPUT_ACCESS=signed (the default) a presigned URL, made"
                                " for this answer and valid OUTPUT_URL_TTL_S; with `public` a permanent one"
                            ),
                        },
                        "outputUrls": {"type": "array", "items": {"type": "string"}, "description": "Every output"},
                        "error": {"type": ["string", "null"]},
                        "webhook": {"type": ["string", "null"]},
                        "webhookEventsFilter": {"type": "array", "items": {"enum": [str(e) for e in EVENTS]}},
                        "createdAt": {"type": "string", "format": "date-time"},
                        "completedAt": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
                "Delivery": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "id",
                        "event",
                        "url",
                        "status",
                        "attempts",
                        "lastStatusCode",
                        "lastError",
                        "nextAttemptAt",
                        "deliveredAt",
                        "createdAt",
                    ],
                    "properties": {
                        "id": {"type": "string", "format": "uuid", "description": "The `webhook-id` it is sent with"},
                        "event": {"enum": [str(e) for e in EVENTS]},
                        "url": {"type": "string"},
                        "status": {"enum": [str(status) for status in DeliveryStatus]},
                        "attempts": {"type": "integer", "minimum": 0},
                        "lastStatusCode": {"type": ["integer", "null"]},
                        "lastError": {"type": ["string", "null"]},
                        "nextAttemptAt": {"type": ["string", "null"], "format": "date-time"},
                        "deliveredAt": {"type": ["string", "null"], "format": "date-time"},
                        "createdAt": {"type": "string", "format": "date-time"},
                    },
                },
                "DeliveryPage": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["items"],
                    "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}}},
                },
                "WebhookSecret": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["key"],
                    "properties": {"key": {"type": "string", "pattern": "^whsec_[A-Za-z0-9+/]{43}=$"}},
                },
                "GenerationPage": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["items", "nextCursor"],
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Generation"}},
                        "nextCursor": {"type": ["string", "null"]},
                    },
                },
                "Config": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["models", "defaultModel", "maxPromptLength"],
                    "properties": {
                        "models": {"type": "array", "items": {"enum": list(allowed_models)}},
                        "defaultModel": {"enum": list(allowed_models)},
                        "maxPromptLength": {"const": MAX_PROMPT},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "Probe": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string"},
                        "error": {"type": "string"},
                        "failing": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
            },
        },
    }


def _secret(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/WebhookSecret"}}}}


def _probe(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Probe"}}}}
