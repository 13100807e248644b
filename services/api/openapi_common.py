"""What every part of the OpenAPI document shares: the media type and the error answer's shape."""

from __future__ import annotations

from typing import Any

JSON = "application/json"


def error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An answer `{"error": message}` with `description` (and `headers`, when it sets some)."""
    response: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response
