"""How the simulator answers as Skytells does: its `x-api-key` check and its error envelope."""

from __future__ import annotations

from aiohttp import web

from devstack.skytells.model import SIM_SETTINGS

# Skytells' own error ids (the official SDK's `ApiErrorId`), by the HTTP status it sends them with.
ERROR_IDS = {
    400: "INVALID_PARAMETER",
    401: "UNAUTHORIZED",
    402: "INSUFFICIENT_CREDITS",
    403: "ACCOUNT_SUSPENDED",
    404: "MODEL_NOT_FOUND",
    422: "INVALID_INPUT",
    429: "RATE_LIMIT_EXCEEDED",
}


def envelope_error(status: int, message: str, error_id: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "status": False,
        "response": message,
        "error": {"message": message, "error_id": error_id, "http_status": status},
    }
    return web.json_response(body, status=status, headers=headers)


def authorised(request: web.Request) -> bool:
    return request.headers.get("x-api-key") == request.app[SIM_SETTINGS].api_key


def unauthorised() -> web.Response:
    return envelope_error(401, "Invalid or missing API key", "UNAUTHORIZED")
