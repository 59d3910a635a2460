"""The built-in providers by name, and the settings they read. Light: no HTTP imports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# name -> environment variable of its key (None: no key)
BUILTIN_KEY_ENV: dict[str, str | None] = {
    "local": None,
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "xai": "XAI_API_KEY",
}
# Kinds a configured provider (``[ai.providers.NAME] kind = "openai"``) may be.
KINDS = ("openai", "anthropic", "xai")


def configured_key_env(name: str, settings: Mapping[str, Any]) -> str | None:
    """The key variable of a provider: ``key_env`` from its settings, else the built-in's,
    else ``<NAME>_API_KEY`` for a provider defined in configuration."""
    if "key_env" in settings:
        return str(settings["key_env"]) or None
    if name in BUILTIN_KEY_ENV:
        return BUILTIN_KEY_ENV[name]
    return f"{name.upper().replace('-', '_')}_API_KEY"
