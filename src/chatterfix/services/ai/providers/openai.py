"""Any OpenAI-compatible server: OpenAI, Ollama, vLLM, LM Studio, llama.cpp, xAI.

``POST {base_url}/chat/completions`` (with ``"stream": true`` for server-sent events ending in
``data: [DONE]``), ``POST {base_url}/embeddings`` and ``POST {base_url}/audio/transcriptions``,
with ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from chatterfix.services.ai.providers.base import HTTPProvider, stream_done, usage_from
from chatterfix.services.ai.types import (
    CHAT,
    EMBEDDINGS,
    STREAM,
    TRANSCRIPTION,
    VISION,
    CompletionRequest,
    CompletionResult,
    Message,
    StreamChunk,
    Usage,
)

if TYPE_CHECKING:
    from chatterfix.services.ai.keys import Secret


def message_body(message: Message) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts.extend(
        {"type": "image_url", "image_url": {"url": image.data_url()}} for image in message.images
    )
    return {"role": message.role, "content": parts}


class OpenAIProvider(HTTPProvider):
    """OpenAI's chat completions, embeddings and transcription API, at ``base_url``."""

    name = "openai"
    key_env: str | None = "OPENAI_API_KEY"
    capabilities = frozenset({CHAT, STREAM, VISION, TRANSCRIPTION, EMBEDDINGS})

    def __init__(
        self,
        *,
        embedding_model: str = "text-embedding-3-small",
        transcription_model: str = "whisper-1",
        stream_usage: bool = True,
        **settings: Any,
    ) -> None:
        settings.setdefault("base_url", "https://api.openai.com/v1")
        settings.setdefault("model", "gpt-4o-mini")
        super().__init__(**settings)
        self.embedding_model = embedding_model
        self.transcription_model = transcription_model
        self.stream_usage = stream_usage

    def auth_headers(self, key: Secret | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key.reveal()}"} if key is not None else {}

    def body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "messages": [message_body(m) for m in request.messages],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.json_mode:
            body["response_format"] = {"type": "json_object"}
        if stream:
            body["stream"] = True
            if self.stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    async def complete(self, request: CompletionRequest, key: Secret | None) -> CompletionResult:
        body = self.body(request, stream=False)
        payload = await self.post_json("/chat/completions", body, key)
        try:
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self.malformed(payload, key) from None
        usage = payload.get("usage") or {}
        return CompletionResult(
            text=text,
            provider=self.name,
            model=str(payload.get("model") or body["model"]),
            usage=usage_from(usage, "prompt_tokens", "completion_tokens"),
            finish_reason=str(finish),
        )

    async def stream(
        self, request: CompletionRequest, key: Secret | None
    ) -> AsyncIterator[StreamChunk]:
        body = self.body(request, stream=True)
        model = str(body["model"])
        finish: str | None = None
        usage: Usage | None = None
        async for _, data in self.stream_events("/chat/completions", body, key):
            if data.strip() == "[DONE]":
                break
            payload = self.event_json(data, key)
            if isinstance(payload, dict) and "error" in payload:
                raise self.stream_failed(payload, key)
            model = str(payload.get("model") or model)
            if payload.get("usage"):
                usage = usage_from(payload["usage"], "prompt_tokens", "completion_tokens")
            for choice in payload.get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    yield StreamChunk(text, provider=self.name, model=model)
                if choice.get("finish_reason"):
                    finish = str(choice["finish_reason"])
        yield stream_done(self.name, model, finish, usage)

    async def embed(
        self, texts: Sequence[str], model: str | None, key: Secret | None
    ) -> list[list[float]]:
        body = {"model": model or self.embedding_model, "input": list(texts)}
        payload = await self.post_json("/embeddings", body, key)
        try:
            rows = sorted(payload["data"], key=lambda row: row.get("index", 0))
            return [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self.malformed(payload, key) from None

    async def transcribe(
        self,
        audio: bytes,
        model: str | None,
        key: Secret | None,
        filename: str = "audio.wav",
        media_type: str = "audio/wav",
    ) -> str:
        payload = await self.post_form(
            "/audio/transcriptions",
            {"model": model or self.transcription_model, "response_format": "json"},
            {"file": (filename, audio, media_type)},
            key,
        )
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str):
            raise self.malformed(payload, key)
        return text
