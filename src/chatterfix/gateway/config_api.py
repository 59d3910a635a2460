"""``/platform/config``: the effective configuration with the source of every key, one key,
and runtime changes. Secrets are always redacted here."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatterfix.config import Config, ConfigError
from chatterfix.gateway.errors import APIError
from chatterfix.gateway.routing import platform_of
from chatterfix.permissions import ADMIN_PERMISSION, requires

KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
BODY_FIELDS = ("value", "text")


async def show_config(request: Request) -> Response:
    """Every key with its effective value and the layer it comes from; ``file_error`` says
    why the last change of the file was refused (``null`` when it applied)."""
    config = platform_of(request).config
    return JSONResponse(
        {"config": config.effective(), "file": _file(config), "file_error": config.file_error}
    )


async def show_config_key(request: Request) -> Response:
    """One key (``value``, ``source``, ``origin``), or every key below a table's name."""
    config = platform_of(request).config
    return JSONResponse(key_view(config, _key(request)))


@requires(ADMIN_PERMISSION)
async def set_config_key(request: Request) -> Response:
    """Management endpoint: sets a runtime value in the running platform.

    Body ``{"value": <JSON value>}``, or ``{"text": "8100"}`` to have the text read as an
    environment variable would be. A value that does not fit the key's schema is a 422
    naming the key and what was expected; nothing changes then.
    """
    config = platform_of(request).config
    key = _key(request)
    value = _requested_value(config, key, await request.body())
    try:
        config.set(key, value)
    except ConfigError as exc:
        expected = exc.problems[0].expected if exc.problems else None
        raise APIError(422, str(exc), "invalid_config", key=key, expected=expected) from None
    return JSONResponse(key_view(config, key))


def key_view(config: Config, key: str) -> dict[str, Any]:
    effective = config.effective()
    if key in effective:
        return {
            "key": key,
            **effective[key],
            "origin": config.origin(key),
            "secret": config.is_secret(key),
        }
    below = {name: entry for name, entry in effective.items() if name.startswith(key + ".")}
    if below:
        return {"key": key, "config": below}
    raise APIError(404, f"no configuration key {key!r}", "config_key_not_found")


def _file(config: Config) -> str | None:
    return str(config.file_path) if config.file_path else None


def _key(request: Request) -> str:
    key: str = request.path_params["key"]
    if not KEY_PATTERN.fullmatch(key):
        raise APIError(422, f"{key!r} is not a configuration key (dotted names)", "invalid_key")
    return key


def _requested_value(config: Config, key: str, body: bytes) -> Any:
    try:
        fields = json.loads(body)
    except ValueError as exc:
        raise APIError(422, f"the body is not valid JSON: {exc}", "invalid_body") from None
    if not isinstance(fields, dict) or len(fields) != 1 or next(iter(fields)) not in BODY_FIELDS:
        raise APIError(
            422,
            'the body must be {"value": <JSON value>} or {"text": "<text>"}',
            "invalid_body",
        )
    if "value" in fields:
        return fields["value"]
    text = fields["text"]
    if not isinstance(text, str):
        raise APIError(422, "'text' must be a string", "invalid_body")
    return config.parse_text(key, text)
