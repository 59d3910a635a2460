"""Anthropic's Messages API: ``POST {base_url}/messages`` with ``x-api-key`` and
``anthropic-version``; streaming as server-sent events (``message_start``,
``content_block_delta``, ``message_delta``, ``message_stop``, ``error``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from chatterfix.services.ai.providers.base import (
    HTTPProvider,
    stream_done,
    usage_from,
    usage_int,
)
from chatterfix.services.ai.types import (
    CHAT,
    STREAM,
    VISION,
    CompletionRequest,
    CompletionResult,
    Message,
    StreamChunk,
    Usage,
)

if TYPE_CHECKING:
    from chatterfix.services.ai.keys import Secret

JSON_INSTRUCTION = "Answer with one JSON object and nothing else."
# Anthropic's stop reasons, in the words the other providers use.
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def message_body(message: Message) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": image.media_type, "data": image.base64()},
        }
        for image in message.images
    ]
    parts.append({"type": "text", "text": message.content})
    return {"role": message.role, "content": parts}


class AnthropicProvider(HTTPProvider):
    name = "anthropic"
    key_env: str | None = "ANTHROPIC_API_KEY"
    capabilities = frozenset({CHAT, STREAM, VISION})

    def __init__(self, *, version: str = "2023-06-01", max_tokens: int = 1024, **settings: Any):
        settings.setdefault("base_url", "https://api.anthropic.com/v1")
        settings.setdefault("model", "claude-3-5-sonnet-latest")
        super().__init__(**settings)
        self.version = version
        self.max_tokens = max_tokens

    def auth_headers(self, key: Secret | None) -> dict[str, str]:
        headers = {"anthropic-version": self.version}
        if key is not None:
            headers["x-api-key"] = key.reveal()
        return headers

    def error_message(self, payload: Any) -> tuple[str, str]:
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            error = payload["error"]
            return str(error.get("message") or ""), str(error.get("type") or "")
        return super().error_message(payload)

    def body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        system = request.system
        if request.json_mode:
            system = f"{system}\n\n{JSON_INSTRUCTION}".strip()
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "max_tokens": request.max_tokens or self.max_tokens,
            "messages": [message_body(m) for m in request.messages if m.role != "system"],
        }
        if system:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if stream:
            body["stream"] = True
        return body

    async def complete(self, request: CompletionRequest, key: Secret | None) -> CompletionResult:
        body = self.body(request, stream=False)
        payload = await self.post_json("/messages", body, key)
        try:
            blocks = payload["content"]
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        except (KeyError, TypeError, AttributeError):
            raise self.malformed(payload, key) from None
        usage = payload.get("usage") or {}
        stop = str(payload.get("stop_reason") or "end_turn")
        return CompletionResult(
            text=text,
            provider=self.name,
            model=str(payload.get("model") or body["model"]),
            usage=usage_from(usage, "input_tokens", "output_tokens"),
            finish_reason=FINISH.get(stop, stop),
        )

    async def stream(
        self, request: CompletionRequest, key: Secret | None
    ) -> AsyncIterator[StreamChunk]:
        body = self.body(request, stream=True)
        model = str(body["model"])
        input_tokens = output_tokens = 0
        finish: str | None = None
        async for event, data in self.stream_events("/messages", body, key):
            payload = self.event_json(data, key)
            kind = payload.get("type", event) if isinstance(payload, dict) else event
            if kind == "message_start":
                message = payload.get("message") or {}
                model = str(message.get("model") or model)
                input_tokens = usage_int((message.get("usage") or {}).get("input_tokens"))
            elif kind == "content_block_delta":
                delta = payload.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    yield StreamChunk(str(delta["text"]), provider=self.name, model=model)
            elif kind == "message_delta":
                stop = (payload.get("delta") or {}).get("stop_reason")
                if stop:
                    finish = FINISH.get(str(stop), str(stop))
                output_tokens = usage_int((payload.get("usage") or {}).get("output_tokens"))
            elif kind == "message_stop":
                break
            elif kind == "error":
                raise self.stream_failed(payload, key)
        yield stream_done(self.name, model, finish, Usage(input_tokens, output_tokens))
