"""Errors of the AI service. Each carries a ``kind`` that the reliability policy acts on.

Messages never contain a key: providers pass every text that came from a server through
:func:`redact` before it becomes part of an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable

AUTH = "auth"  # 401/403: never retried
BAD_REQUEST = "bad_request"  # 400/404/422: never retried
RATE_LIMIT = "rate_limit"  # 429: retried after Retry-After
TIMEOUT = "timeout"  # retried with backoff
SERVER = "server"  # 5xx: retried with backoff
CONNECTION = "connection"  # refused, reset: retried with backoff
CONTEXT_WINDOW = "context_window"  # the prompt is too long: a larger model is tried
MISSING_KEY = "missing_key"  # no key anywhere: never retried
UNSUPPORTED = "unsupported"  # the provider lacks the capability: never retried
INVALID_OUTPUT = "invalid_output"  # the answer is not what was asked for

RETRYABLE = frozenset({RATE_LIMIT, TIMEOUT, SERVER, CONNECTION})
REDACTED = "********"


class AIError(Exception):
    """Any failure of the AI service."""

    kind: str = "error"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        provider: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind
        self.provider = provider
        self.status_code = status_code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


class ProviderError(AIError):
    """A provider answered with an error, or could not be reached."""


class MissingKeyError(AIError):
    """No key for a provider that needs one; the message names its environment variable."""

    kind = MISSING_KEY


class UnknownProviderError(AIError):
    kind = BAD_REQUEST


class CapabilityError(AIError):
    kind = UNSUPPORTED


class AllProvidersFailed(AIError):
    """Every provider of the chain failed; ``errors`` holds the last error of each."""

    def __init__(self, errors: list[AIError]) -> None:
        last = errors[-1]
        if len(errors) == 1:
            message = last.message
        else:
            tried = "; ".join(f"{e.provider}: {e.message}" for e in errors)
            message = f"every provider failed ({tried})"
        super().__init__(
            message,
            kind=last.kind,
            provider=last.provider,
            status_code=last.status_code,
            retry_after=last.retry_after,
        )
        self.errors = errors


def kind_for_status(status_code: int) -> str:
    if status_code in (401, 403):
        return AUTH
    if status_code == 429:
        return RATE_LIMIT
    if status_code in (408, 409) or status_code >= 500:
        return SERVER
    return BAD_REQUEST


_CONTEXT_WORDS = re.compile(
    r"context[ _]length|context[ _]window|maximum context|too many tokens|prompt is too long"
    r"|context_length_exceeded|max_tokens_exceeded|input is too long",
    re.IGNORECASE,
)


def looks_like_context_window(message: str) -> bool:
    return bool(_CONTEXT_WORDS.search(message))


_WORDS = re.compile(r"[A-Za-z0-9_\-\.]{8,}")


def redact(text: str, *secrets: str | None) -> str:
    """``text`` without any of ``secrets``, nor any run of 8+ characters taken from one
    (servers echo keys partly, ``sk-abc123...wxyz``)."""
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, REDACTED)
        text = _WORDS.sub(_replacer(secret), text)
    return text


def _replacer(secret: str) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        return REDACTED if _fragment_of(match.group(0), secret) else match.group(0)

    return replace


def _fragment_of(word: str, secret: str) -> bool:
    stripped = word.strip(".-_")
    if len(stripped) < 8 or (stripped.isalpha() and stripped.islower()):
        return False  # short pieces and plain words tell nothing of a key
    return stripped in secret
