"""Request bodies that must be one JSON object with known fields."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from starlette.requests import Request

from chatterfix.gateway.errors import APIError


async def json_object(
    request: Request,
    allowed: Collection[str],
    *,
    max_bytes: int,
    code: str = "invalid_body",
    status: int = 400,
) -> dict[str, Any]:
    """The body as a dict, or a JSON error: 413 when larger than ``max_bytes``, ``status``
    when it is not a JSON object, 422 naming unknown fields. An empty body is ``{}``."""
    body = await request.body()
    if len(body) > max_bytes:
        raise APIError(413, f"the request body is larger than {max_bytes} bytes")
    return parse_json_object(body, allowed, code=code, status=status)


def parse_json_object(
    body: bytes, allowed: Collection[str], *, code: str = "invalid_body", status: int = 400
) -> dict[str, Any]:
    try:
        fields = json.loads(body or b"{}")
    except ValueError as exc:
        raise APIError(status, f"the body is not valid JSON: {exc}", code) from None
    if not isinstance(fields, dict):
        raise APIError(status, "the body must be a JSON object", code)
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise APIError(
            422,
            f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}",
            code,
        )
    return fields
