"""What a provider is, and the plumbing the HTTP providers share.

A provider is any object with a ``name`` and an async ``complete(request, key)``. Optional
attributes and methods widen what it can do:

========================  ===================================================================
``needs_key``             ``True`` when calls need a key (default ``False``)
``key_env``               the environment variable holding its key (``"OPENAI_API_KEY"``)
``capabilities``          a set of ``chat``, ``stream``, ``vision``, ``transcription``,
                          ``embeddings`` (default ``{"chat"}``)
``default_model``         the model used when a call names none
``stream(request, key)``  an async iterator of :class:`StreamChunk`
``embed(texts, model, key)``             a list of vectors
``transcribe(audio, model, key, filename, media_type)``  the transcript
``aclose()``              release connections (called when the platform stops)
========================  ===================================================================

The service resolves the key and passes it as a :class:`~chatterfix.services.ai.keys.Secret`
(or ``None``); providers must never keep it.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import httpx

from chatterfix.services.ai.errors import (
    BAD_REQUEST,
    CONNECTION,
    CONTEXT_WINDOW,
    INVALID_OUTPUT,
    SERVER,
    TIMEOUT,
    ProviderError,
    kind_for_status,
    looks_like_context_window,
    redact,
)
from chatterfix.services.ai.types import (
    CHAT,
    CompletionRequest,
    CompletionResult,
    StreamChunk,
    Usage,
)

if TYPE_CHECKING:
    from chatterfix.services.ai.keys import Secret


@runtime_checkable
class Provider(Protocol):
    """The least a provider has: a name and ``complete``."""

    name: str

    async def complete(self, request: CompletionRequest, key: Secret | None) -> CompletionResult:
        """Answer ``request``; raise :class:`ProviderError` (with a ``kind``) on failure."""
        ...


def capabilities_of(provider: object) -> frozenset[str]:
    declared = getattr(provider, "capabilities", None)
    return frozenset(declared) if declared is not None else frozenset({CHAT})


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HTTPProvider:
    """Shared by the HTTP providers: one lazily created ``httpx.AsyncClient``, error mapping,
    and server-sent events."""

    name: str = ""
    needs_key: bool = True
    key_env: str | None = None
    capabilities: frozenset[str] = frozenset({CHAT})

    def __init__(
        self,
        *,
        name: str | None = None,
        base_url: str,
        model: str,
        key_env: str | None = None,
        needs_key: bool | None = None,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if name:
            self.name = name
        if key_env is not None:
            self.key_env = key_env or None
        if needs_key is not None:
            self.needs_key = needs_key
        self.base_url = base_url.rstrip("/")
        self.default_model = model
        self.timeout = timeout
        self.extra_headers = dict(headers or {})
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                headers=self.extra_headers,
            )
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def auth_headers(self, key: Secret | None) -> dict[str, str]:
        raise NotImplementedError

    # -- requests ----------------------------------------------------------------------------

    async def post_json(self, path: str, body: Mapping[str, Any], key: Secret | None) -> Any:
        return await self.post(path, key, json=body)

    async def post_form(
        self,
        path: str,
        data: Mapping[str, str],
        files: Mapping[str, tuple[str, bytes, str]],
        key: Secret | None,
    ) -> Any:
        return await self.post(path, key, data=dict(data), files=dict(files))

    async def post(self, path: str, key: Secret | None, **content: Any) -> Any:
        """POST ``content`` (httpx's ``json``, ``data``, ``files``) and decode the JSON answer;
        transport errors and error statuses become :class:`ProviderError`."""
        try:
            response = await self.client.post(
                self.base_url + path, headers=self.auth_headers(key), **content
            )
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, key) from None
        if response.status_code >= 400:
            raise self.status_error(response, response.content, key)
        return self.decode(response.content, key)

    async def stream_events(
        self, path: str, body: Mapping[str, Any], key: Secret | None
    ) -> AsyncIterator[tuple[str, str]]:
        """POST ``body`` and yield the server-sent events of the answer as (event, data)."""
        try:
            async with self.client.stream(
                "POST", self.base_url + path, json=body, headers=self.auth_headers(key)
            ) as response:
                if response.status_code >= 400:
                    content = await response.aread()
                    raise self.status_error(response, content, key)
                event, data = "", list[str]()
                async for line in response.aiter_lines():
                    if not line:
                        if data:
                            yield event or "message", "\n".join(data)
                        event, data = "", []
                    elif line.startswith(":"):
                        continue
                    else:
                        field, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if field == "event":
                            event = value
                        elif field == "data":
                            data.append(value)
                if data:
                    yield event or "message", "\n".join(data)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc, key) from None

    # -- errors ------------------------------------------------------------------------------

    def decode(self, content: bytes, key: Secret | None) -> Any:
        try:
            return json.loads(content)
        except ValueError:
            raise ProviderError(
                f"{self.name} answered with something that is not JSON: "
                f"{redact(content[:200].decode('utf-8', 'replace'), _raw(key))!r}",
                kind=INVALID_OUTPUT,
                provider=self.name,
            ) from None

    def event_json(self, data: str, key: Secret | None) -> Any:
        """The JSON payload of one server-sent event."""
        try:
            return json.loads(data)
        except ValueError:
            raise self.malformed(data, key) from None

    def malformed(self, payload: Any, key: Secret | None) -> ProviderError:
        """An answer that parsed but is not in the shape the provider documents."""
        shown = payload if isinstance(payload, str) else json.dumps(payload)[:200]
        return ProviderError(
            redact(f"{self.name} answered in an unexpected shape: {shown}", _raw(key)),
            kind=INVALID_OUTPUT,
            provider=self.name,
        )

    def stream_failed(self, payload: Any, key: Secret | None) -> ProviderError:
        """An error event inside a stream: the status was 200, so the error is the server's."""
        message, _ = self.error_message(payload)
        return ProviderError(
            redact(f"{self.name} stream failed: {message}", _raw(key)),
            kind=SERVER,
            provider=self.name,
        )

    def transport_error(self, exc: httpx.HTTPError, key: Secret | None) -> ProviderError:
        kind = TIMEOUT if isinstance(exc, httpx.TimeoutException) else CONNECTION
        what = "timed out" if kind == TIMEOUT else "could not be reached"
        detail = redact(str(exc) or type(exc).__name__, _raw(key))
        return ProviderError(
            f"{self.name} at {self.base_url} {what}: {detail}", kind=kind, provider=self.name
        )

    def error_message(self, payload: Any) -> tuple[str, str]:
        """(message, code) from an error body; providers override for their format."""
        if isinstance(payload, dict):
            error = payload.get("error", payload)
            if isinstance(error, dict):
                return str(error.get("message") or ""), str(
                    error.get("code") or error.get("type") or ""
                )
            if isinstance(error, str):
                return error, ""
        return "", ""

    def status_error(
        self, response: httpx.Response, content: bytes, key: Secret | None
    ) -> ProviderError:
        status = response.status_code
        try:
            message, code = self.error_message(json.loads(content))
        except ValueError:
            message, code = content[:300].decode("utf-8", "replace").strip(), ""
        kind = kind_for_status(status)
        if kind == BAD_REQUEST and (
            looks_like_context_window(message) or looks_like_context_window(code)
        ):
            kind = CONTEXT_WINDOW
        text = f"{self.name} answered {status}"
        if message:
            text += f": {message}"
        if kind == "auth" and self.key_env:
            text += f" (check the key: `chatterfix keys set {self.name}` or ${self.key_env})"
        return ProviderError(
            redact(text, _raw(key)),
            kind=kind,
            provider=self.name,
            status_code=status,
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
        )


def _raw(key: Secret | None) -> str | None:
    return key.reveal() if key is not None else None


def text_of(parts: Sequence[Any]) -> str:
    return "".join(str(part) for part in parts)


def usage_int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def usage_from(raw: Any, input_field: str, output_field: str) -> Usage:
    """Token counts from a provider's usage object, under that provider's field names."""
    return Usage(usage_int(raw.get(input_field)), usage_int(raw.get(output_field)))


def stream_done(provider: str, model: str, finish: str | None, usage: Any) -> StreamChunk:
    return StreamChunk(
        "", provider=provider, model=model, finish_reason=finish or "stop", usage=usage
    )
