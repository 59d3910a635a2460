"""JSON errors everywhere: ``{"error": {"code", "message", "request_id"}}``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatterfix.context import current_request_id


class APIError(Exception):
    """Raise from a handler to answer with a JSON error of your choosing."""

    def __init__(
        self,
        status_code: int,
        message: str,
        code: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code or _code_for(status_code)
        self.headers = dict(headers or {})
        self.details = details


def _code_for(status_code: int) -> str:
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        return "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


def error_response(
    status_code: int,
    message: str,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    **details: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "code": code or _code_for(status_code),
        "message": message,
        "request_id": current_request_id.get(),
    }
    body.update(details)
    return JSONResponse({"error": body}, status_code=status_code, headers=headers)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return error_response(exc.status_code, exc.detail, headers=exc.headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc.status_code, exc.message, exc.code, exc.headers, **exc.details)


def internal_error() -> JSONResponse:
    """The JSON 500 for an unhandled error: it says nothing of the error itself."""
    return error_response(500, "internal server error", "internal_error")


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's last-resort handler."""
    return internal_error()
