"""``/platform/ai/*``: the AI service for remote apps (permission ``ai.use``)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from chatterfix.gateway.bodies import json_object
from chatterfix.gateway.errors import APIError
from chatterfix.gateway.routing import platform_of
from chatterfix.permissions import requires
from chatterfix.services.ai import errors as ai_errors

AI_PERMISSION = "ai.use"
MAX_BODY = 16 * 1024 * 1024  # images and audio travel base64-encoded
GENERATE_FIELDS = {
    "prompt",
    "messages",
    "system",
    "provider",
    "model",
    "temperature",
    "max_tokens",
    "stop",
    "json_mode",
    "fallbacks",
}
# What each kind of AI error is to an HTTP client.
STATUS = {
    ai_errors.MISSING_KEY: (503, "ai_key_missing"),
    ai_errors.AUTH: (502, "ai_provider_auth_failed"),
    ai_errors.RATE_LIMIT: (429, "ai_rate_limited"),
    ai_errors.TIMEOUT: (504, "ai_timeout"),
    ai_errors.SERVER: (502, "ai_provider_error"),
    ai_errors.CONNECTION: (502, "ai_provider_unreachable"),
    ai_errors.CONTEXT_WINDOW: (422, "ai_context_window_exceeded"),
    ai_errors.UNSUPPORTED: (422, "ai_capability_missing"),
    ai_errors.BAD_REQUEST: (422, "ai_bad_request"),
    ai_errors.INVALID_OUTPUT: (502, "ai_invalid_output"),
}


def api_error(exc: ai_errors.AIError) -> APIError:
    status, code = STATUS.get(exc.kind, (502, "ai_error"))
    headers = {}
    if exc.kind == ai_errors.RATE_LIMIT and exc.retry_after is not None:
        headers["Retry-After"] = f"{max(1, round(exc.retry_after))}"
    return APIError(status, exc.message, code, headers=headers, provider=exc.provider)


async def _body(request: Request, allowed: set[str]) -> dict[str, Any]:
    return await json_object(request, allowed, max_bytes=MAX_BODY)


def _check(fields: dict[str, Any], name: str, *types: type) -> Any:
    value = fields.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise APIError(422, f"field {name!r} must be {expected}", "invalid_body")
    return value


def _generate_options(fields: dict[str, Any]) -> dict[str, Any]:
    prompt = _check(fields, "prompt", str)
    messages = _check(fields, "messages", list)
    if prompt is None and not messages:
        raise APIError(422, "give 'prompt' or 'messages'", "invalid_body")
    for message in messages or ():
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("system", "user", "assistant")
            or not isinstance(message.get("content"), str)
        ):
            raise APIError(
                422,
                'each message must be {"role": system|user|assistant, "content": text}',
                "invalid_body",
            )
    stop = _check(fields, "stop", str, list)
    return {
        "prompt": prompt,
        "messages": messages,
        "system": _check(fields, "system", str),
        "provider": _check(fields, "provider", str),
        "model": _check(fields, "model", str),
        "temperature": _check(fields, "temperature", int, float),
        "max_tokens": _check(fields, "max_tokens", int),
        "stop": stop,
        "json_mode": bool(_check(fields, "json_mode", bool)),
        "fallbacks": fields.get("fallbacks") is not False,
    }


def _bytes(fields: dict[str, Any], name: str) -> bytes | None:
    value = _check(fields, name, str)
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(422, f"field {name!r} must be base64", "invalid_body") from None


@requires(AI_PERMISSION)
async def generate(request: Request) -> Response:
    """``{"prompt" | "messages", "provider", "model", ...}`` → the answer with its details."""
    from chatterfix.services.ai.types import to_dict

    options = _generate_options(await _body(request, GENERATE_FIELDS))
    try:
        text = await platform_of(request).ai.generate_text(**options)
    except ai_errors.AIError as exc:
        raise api_error(exc) from None
    return JSONResponse(to_dict(text.result))


@requires(AI_PERMISSION)
async def generate_stream(request: Request) -> Response:
    """The same, as server-sent events: ``chunk`` events with text, then one ``done`` event
    (finish reason, usage) or one ``error`` event."""
    from chatterfix.services.ai.types import to_dict

    options = _generate_options(await _body(request, GENERATE_FIELDS))
    chunks = platform_of(request).ai.stream_text(**options)
    try:  # errors before the first chunk are plain JSON errors
        first = await chunks.__anext__()
    except ai_errors.AIError as exc:
        raise api_error(exc) from None

    async def events() -> AsyncIterator[str]:
        chunk = first
        try:
            while True:
                if chunk.finish_reason is not None:
                    yield _sse("done", to_dict(chunk))
                elif chunk.text:
                    yield _sse("chunk", {"text": chunk.text, "model": chunk.model})
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except ai_errors.AIError as exc:
            _, code = STATUS.get(exc.kind, (502, "ai_error"))
            yield _sse("error", {"error": {"code": code, "message": exc.message}})
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@requires(AI_PERMISSION)
async def list_providers(request: Request) -> Response:
    """The providers, their capabilities and whether a key is configured (never the key)."""
    ai = platform_of(request).ai
    return JSONResponse({"default": ai.default_provider, "providers": ai.describe_providers()})


@requires(AI_PERMISSION)
async def analyze(request: Request) -> Response:
    """``{"image": base64, "image_description", "analysis_type", "asset", "provider",
    "model", "media_type"}`` → condition findings."""
    fields = await _body(
        request,
        {"image", "image_description", "analysis_type", "asset", "provider", "model", "media_type"},
    )
    asset = _check(fields, "asset", dict)
    try:
        findings = await platform_of(request).ai.analyze_image(
            image=_bytes(fields, "image"),
            image_description=_check(fields, "image_description", str),
            analysis_type=_check(fields, "analysis_type", str) or "condition_assessment",
            asset=asset,
            provider=_check(fields, "provider", str),
            model=_check(fields, "model", str),
            media_type=_check(fields, "media_type", str) or "image/jpeg",
        )
    except ai_errors.AIError as exc:
        raise api_error(exc) from None
    return JSONResponse(findings.to_dict())


@requires(AI_PERMISSION)
async def voice(request: Request) -> Response:
    """``{"audio": base64, "voice_text", "provider", "model", "filename", "media_type"}`` →
    the transcript and a validated work-order draft."""
    fields = await _body(
        request, {"audio", "voice_text", "provider", "model", "filename", "media_type"}
    )
    try:
        result = await platform_of(request).ai.process_voice_to_text(
            audio=_bytes(fields, "audio"),
            voice_text=_check(fields, "voice_text", str),
            provider=_check(fields, "provider", str),
            model=_check(fields, "model", str),
            filename=_check(fields, "filename", str) or "audio.wav",
            media_type=_check(fields, "media_type", str) or "audio/wav",
        )
    except ai_errors.AIError as exc:
        raise api_error(exc) from None
    return JSONResponse(result.to_dict())


AI_ROUTES = [
    Route("/platform/ai/providers", list_providers, methods=["GET"]),
    Route("/platform/ai/generate", generate, methods=["POST"]),
    Route("/platform/ai/generate/stream", generate_stream, methods=["POST"]),
    Route("/platform/ai/analyze", analyze, methods=["POST"]),
    Route("/platform/ai/voice", voice, methods=["POST"]),
]
