"""xAI: OpenAI-compatible chat completions at ``https://api.x.ai/v1``."""

from __future__ import annotations

from typing import Any

from chatterfix.services.ai.providers.openai import OpenAIProvider
from chatterfix.services.ai.types import CHAT, STREAM, VISION


class XAIProvider(OpenAIProvider):
    name = "xai"
    key_env: str | None = "XAI_API_KEY"
    capabilities = frozenset({CHAT, STREAM, VISION})

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("base_url", "https://api.x.ai/v1")
        settings.setdefault("model", "grok-2-latest")
        super().__init__(**settings)
