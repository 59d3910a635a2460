"""``local``: the default provider. Deterministic, offline, no key: the maintenance rule
engine (:mod:`chatterfix.services.ai.rules`) and feature-hashed embeddings."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from datetime import date
from typing import TYPE_CHECKING

from chatterfix.services.ai import rules
from chatterfix.services.ai.providers.base import stream_done
from chatterfix.services.ai.types import (
    CHAT,
    EMBEDDINGS,
    STREAM,
    CompletionRequest,
    CompletionResult,
    StreamChunk,
    Usage,
)

if TYPE_CHECKING:
    from chatterfix.services.ai.keys import Secret

_PIECES = re.compile(r"\S+\s*|\s+")


def count_tokens(text: str) -> int:
    """A rough token count (words and punctuation), for usage figures."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def _usage(request: CompletionRequest, answer: str) -> Usage:
    return Usage(count_tokens(request.prompt), count_tokens(answer))


class LocalProvider:
    """Rule-based answers for the maintenance domain; never touches the network."""

    name = "local"
    needs_key = False
    key_env: str | None = None
    capabilities = frozenset({CHAT, STREAM, EMBEDDINGS})
    default_model = "rules"

    def __init__(self, *, dimensions: int = 256, as_of: date | None = None) -> None:
        self.dimensions = dimensions
        self.as_of = as_of  # fixes "today" for assessments (tests, reproducible reports)

    def __repr__(self) -> str:
        return f"LocalProvider(dimensions={self.dimensions})"

    def answer(self, request: CompletionRequest) -> str:
        text = rules.answer(request.prompt, json_mode=request.json_mode, as_of=self.as_of)
        if request.max_tokens is not None:
            pieces = _PIECES.findall(text)
            text = "".join(pieces[: max(1, request.max_tokens)]).rstrip()
        for stop in request.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text

    async def complete(self, request: CompletionRequest, key: Secret | None) -> CompletionResult:
        text = self.answer(request)
        return CompletionResult(
            text=text,
            provider=self.name,
            model=request.model or self.default_model,
            usage=_usage(request, text),
        )

    async def stream(
        self, request: CompletionRequest, key: Secret | None
    ) -> AsyncIterator[StreamChunk]:
        text = self.answer(request)
        model = request.model or self.default_model
        for piece in _PIECES.findall(text):
            yield StreamChunk(piece, provider=self.name, model=model)
        yield stream_done(self.name, model, "stop", _usage(request, text))

    async def embed(
        self, texts: Sequence[str], model: str | None, key: Secret | None
    ) -> list[list[float]]:
        return [rules.hashed_embedding(text, self.dimensions) for text in texts]
