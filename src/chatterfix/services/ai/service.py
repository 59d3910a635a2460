"""``platform.ai``: one service in front of every provider.

One loop (:meth:`AIService._run`) owns retries and fallbacks for every operation: auth and
bad-request errors are never retried; 429 waits for ``Retry-After``; timeouts, connection
errors and 5xx back off exponentially with jitter; a context-window error moves to the
provider's ``fallback_model``; then the next provider of ``ai.fallbacks`` is tried. Every
attempt is recorded (:attr:`AIService.records`), and every call ends with an
``ai.analysis.completed`` or ``ai.analysis.failed`` event.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs

from chatterfix.services.ai import rules, structured
from chatterfix.services.ai.catalog import BUILTIN_KEY_ENV, KINDS, configured_key_env
from chatterfix.services.ai.errors import (
    CONTEXT_WINDOW,
    RATE_LIMIT,
    TIMEOUT,
    AIError,
    AllProvidersFailed,
    CapabilityError,
    MissingKeyError,
    ProviderError,
    UnknownProviderError,
    redact,
)
from chatterfix.services.ai.keys import KeyStore, Secret, keys_file_for
from chatterfix.services.ai.providers.base import capabilities_of
from chatterfix.services.ai.providers.local import LocalProvider
from chatterfix.services.ai.types import (
    CHAT,
    EMBEDDINGS,
    STREAM,
    TRANSCRIPTION,
    VISION,
    CallRecord,
    CompletionRequest,
    CompletionResult,
    ConditionFindings,
    GeneratedText,
    Image,
    Message,
    StreamChunk,
    VoiceResult,
    WorkOrderDraft,
)

if TYPE_CHECKING:
    from chatterfix.events.bus import EventBus

logger = logging.getLogger("chatterfix.ai")
T = TypeVar("T")
COMPLETED = "ai.analysis.completed"
FAILED = "ai.analysis.failed"


@attrs.frozen
class Target:
    """A provider and model to try; ``model`` empty means the provider's default."""

    provider: str
    model: str = ""
    reason: str = "requested"  # requested, fallback, larger_model


@attrs.frozen
class Policy:
    """Retry settings; ``sleep``, ``clock`` and ``random`` are injectable for tests."""

    attempts: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 60.0
    timeout: float = 60.0
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    clock: Callable[[], float] = time.monotonic
    random: Callable[[], float] = attrs.field(factory=lambda: random.Random().random)

    def backoff_delay(self, retry: int) -> float:
        """Exponential backoff with jitter: between half and all of ``backoff * 2**(n-1)``."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return float(ceiling / 2 + ceiling / 2 * self.random())


@attrs.define
class _Call:
    """An operation in progress, for its record and its event."""

    id: int
    operation: str
    target: Target
    attempt: int
    started: float
    at: float
    fallback: bool


@attrs.frozen
class _Outcome:
    """What a structured call made, with the usage and model of the completion behind it."""

    value: Any
    usage: Any = None
    model: str | None = None


def split_model(model: str | None) -> tuple[str | None, str]:
    """``"openai/gpt-4o"`` → ``("openai", "gpt-4o")``; split at the first ``/``."""
    if not model:
        return None, ""
    if "/" in model:
        provider, _, name = model.partition("/")
        return provider, name
    return None, model


class AIService:
    """Text, streams, image findings, voice-to-work-order and embeddings over providers."""

    def __init__(
        self,
        config: Any,
        *,
        plugin_providers: Mapping[str, Any] | None = None,
        events: EventBus | None = None,
        keys: KeyStore | None = None,
        policy: Policy | None = None,
        wall_clock: Callable[[], float] = time.time,
        as_of: date | None = None,
    ) -> None:
        self.config = config
        self._plugin_providers: Mapping[str, Any] = (
            plugin_providers if plugin_providers is not None else {}
        )
        self.events = events
        self.keys = keys or KeyStore(keys_file_for(config))
        self._policy = policy
        self._policy_cache: Policy | None = None
        self._wall = wall_clock
        self._as_of = as_of
        self._builtins: dict[str, Any] | None = None
        self._retired: list[Any] = []
        self._ids = itertools.count(1)
        self.records: deque[CallRecord] = deque(
            maxlen=max(1, int(config.get("ai.record_size") or 1000))
        )
        self._unwatch: Callable[[], None] | None = None
        watch = getattr(config, "watch", None)
        if watch is not None:
            self._unwatch = _unowned(lambda: watch("ai", self._config_changed))

    @classmethod
    def for_platform(cls, platform: Any) -> AIService:
        return cls(platform.config, plugin_providers=platform.ai_providers, events=platform.events)

    # -- settings ------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        if self._policy is not None:
            return self._policy
        if self._policy_cache is not None:
            return self._policy_cache
        get = self.config.get
        self._policy_cache = Policy(
            attempts=max(1, int(get("ai.retry_attempts"))),
            backoff=float(get("ai.retry_backoff")),
            max_backoff=float(get("ai.retry_max_backoff")),
            max_retry_after=float(get("ai.max_retry_after")),
            timeout=float(get("ai.timeout")),
        )
        return self._policy_cache

    def _settings(self, name: str) -> dict[str, Any]:
        value = self.config.get(f"ai.providers.{name}")
        return dict(value) if isinstance(value, Mapping) else {}

    def _config_changed(self, key: str, value: Any) -> None:
        if self._builtins is not None:
            self._retired.extend(self._builtins.values())
            self._builtins = None
        self._policy_cache = None

    # -- providers -----------------------------------------------------------------------

    def _build_builtins(self) -> dict[str, Any]:
        from chatterfix.services.ai.providers.anthropic import AnthropicProvider
        from chatterfix.services.ai.providers.openai import OpenAIProvider
        from chatterfix.services.ai.providers.xai import XAIProvider

        classes: dict[str, Any] = {
            "openai": OpenAIProvider,
            "anthropic": AnthropicProvider,
            "xai": XAIProvider,
        }
        local = self._settings("local")
        built: dict[str, Any] = {
            "local": LocalProvider(dimensions=int(local.get("dimensions", 256)), as_of=self._as_of)
        }
        table = self.config.get("ai.providers")
        names = set(classes) | set(table if isinstance(table, Mapping) else {})
        timeout = float(self.config.get("ai.timeout"))
        for name in sorted(names - {"local"}):
            settings = self._settings(name)
            kind = str(settings.get("kind") or (name if name in classes else ""))
            if kind not in KINDS:
                if name not in classes:
                    logger.warning(
                        "ai.providers.%s: unknown kind %r (expected one of %s); ignored",
                        name,
                        kind,
                        ", ".join(KINDS),
                    )
                continue
            options: dict[str, Any] = {
                key: settings[key]
                for key in (
                    "base_url",
                    "model",
                    "embedding_model",
                    "transcription_model",
                    "version",
                    "max_tokens",
                    "needs_key",
                    "headers",
                )
                if settings.get(key) not in (None, "")
            }
            options["timeout"] = float(settings.get("timeout") or timeout)
            options["name"] = name
            options["key_env"] = configured_key_env(name, settings) or ""
            built[name] = classes[kind](**options)
        return built

    @property
    def builtin_providers(self) -> dict[str, Any]:
        if self._builtins is None:
            self._builtins = self._build_builtins()
        return self._builtins

    @property
    def providers(self) -> dict[str, Any]:
        """Every provider by name; a plugin's provider replaces a built-in of the same name."""
        return {**self.builtin_providers, **self._plugin_providers}

    def provider(self, name: str) -> Any:
        found = self._plugin_providers.get(name) or self.builtin_providers.get(name)
        if found is None:
            known = ", ".join(sorted(self.providers))
            raise UnknownProviderError(
                f"unknown AI provider {name!r}; known providers: {known}", provider=name
            )
        return found

    def key_env(self, provider: Any) -> str | None:
        env = getattr(provider, "key_env", None)
        return str(env) if env else None

    def describe_providers(self) -> list[dict[str, Any]]:
        """Name, origin, capabilities, default model and where the key comes from (never
        the key itself)."""
        rows = []
        for name, provider in sorted(self.providers.items()):
            env = self.key_env(provider)
            needs = bool(getattr(provider, "needs_key", False))
            rows.append(
                {
                    "name": name,
                    "origin": "plugin" if name in self._plugin_providers else "builtin",
                    "capabilities": sorted(capabilities_of(provider)),
                    "default_model": str(getattr(provider, "default_model", "") or ""),
                    "needs_key": needs,
                    "key_env": env,
                    "key_source": self.keys.source(name, env).source if needs else None,
                    "default": name == self.default_provider,
                }
            )
        return rows

    @property
    def default_provider(self) -> str:
        return str(self.config.get("ai.default_provider") or "local")

    def _key(self, provider: Any, explicit: str | None) -> Secret | None:
        env = self.key_env(provider)
        key = self.keys.resolve(provider.name, env, explicit)
        if key is None and getattr(provider, "needs_key", False):
            where = f"set the environment variable {env}, or " if env else ""
            raise MissingKeyError(
                f"no API key for AI provider {provider.name!r}: {where}run "
                f"`chatterfix keys set {provider.name}`",
                provider=provider.name,
            )
        return key

    def targets(
        self,
        provider: str | None,
        model: str | None,
        capability: str = CHAT,
        *,
        fallbacks: bool = True,
    ) -> list[Target]:
        """The chain to try: the provider asked for (or the default), then ``ai.fallbacks``."""
        if provider:
            name, model_id = provider, model or ""
            if model_id.startswith(f"{provider}/"):
                model_id = model_id[len(provider) + 1 :]
        else:
            prefix, model_id = split_model(model)
            name = prefix or self.default_provider
        chain = [Target(name, model_id)]
        if fallbacks:
            for entry in self.config.get("ai.fallbacks") or ():
                prefix, fallback_model = split_model(str(entry))
                fallback = prefix or str(entry)
                if fallback == name or any(t.provider == fallback for t in chain):
                    continue
                candidate = self._plugin_providers.get(fallback) or self.builtin_providers.get(
                    fallback
                )
                if candidate is not None and capability not in capabilities_of(candidate):
                    continue
                chain.append(Target(fallback, fallback_model if prefix else "", "fallback"))
        return chain

    def _larger_model(self, provider: Any) -> str:
        settings = self._settings(provider.name)
        return str(settings.get("fallback_model") or getattr(provider, "fallback_model", "") or "")

    # -- the loop ------------------------------------------------------------------------

    async def _run(
        self,
        operation: str,
        chain: Sequence[Target],
        capability: str,
        call: Callable[[Any, str, Secret | None], Awaitable[Any]],
        *,
        api_key: str | None = None,
        finish: bool = True,
    ) -> tuple[Any, _Call]:
        """Try ``call(provider, model, key)`` along ``chain`` under the retry policy.

        Returns the value and the call's state; with ``finish=False`` the caller records the
        success itself (streams do, once the stream has ended)."""
        policy = self.policy
        call_id = next(self._ids)
        queue = deque(chain)
        errors: list[AIError] = []
        first = chain[0].provider
        tried: set[tuple[str, str]] = set()
        state: _Call | None = None
        while queue:
            target = queue.popleft()
            tried.add((target.provider, target.model))
            attempt = 0
            error: AIError
            while True:
                attempt += 1
                state = _Call(
                    call_id,
                    operation,
                    target,
                    attempt,
                    policy.clock(),
                    self._wall(),
                    target.provider != first,
                )
                provider: Any = None
                key: Secret | None = None
                try:
                    provider = self.provider(target.provider)
                    if capability not in capabilities_of(provider):
                        raise CapabilityError(
                            f"AI provider {provider.name!r} cannot do {capability} "
                            f"(it can: {', '.join(sorted(capabilities_of(provider)))})",
                            provider=provider.name,
                        )
                    key = self._key(provider, api_key if target.provider == first else None)
                    with anyio.fail_after(policy.timeout):
                        value = await call(provider, target.model, key)
                except TimeoutError:
                    error = ProviderError(
                        f"{target.provider} did not answer within {policy.timeout:g} s",
                        kind=TIMEOUT,
                        provider=target.provider,
                    )
                except AIError as exc:
                    error = exc
                except Exception as exc:  # a plugin's provider may raise anything
                    detail = redact(str(exc), key.reveal() if key else None)
                    error = ProviderError(
                        f"{target.provider} failed: {type(exc).__name__}: {detail}",
                        provider=target.provider,
                    )
                else:
                    if isinstance(value, _Outcome):
                        outcome, value = value, value.value
                    else:
                        outcome = _Outcome(
                            value, getattr(value, "usage", None), getattr(value, "model", None)
                        )
                    if finish:
                        self._record(
                            state, policy, ok=True, usage=outcome.usage, model=outcome.model
                        )
                        await self._emit_completed(state)
                    return value, state
                if error.provider is None:
                    error.provider = target.provider
                self._record(state, policy, ok=False, error=error)
                logger.warning(
                    "AI %s via %s/%s failed (attempt %d, %s): %s",
                    operation,
                    target.provider,
                    target.model or "default",
                    attempt,
                    error.kind,
                    error.message,
                )
                if error.kind == CONTEXT_WINDOW and provider is not None:
                    larger = self._larger_model(provider)
                    if larger and (target.provider, larger) not in tried:
                        queue.appendleft(Target(target.provider, larger, "larger_model"))
                        break
                if not error.retryable or attempt >= policy.attempts:
                    break
                if error.kind == RATE_LIMIT and error.retry_after is not None:
                    if error.retry_after > policy.max_retry_after:
                        break  # waiting that long is worse than the next provider
                    delay = error.retry_after
                else:
                    delay = policy.backoff_delay(attempt)
                await policy.sleep(delay)
            errors.append(error)
        # One provider tried: its own error (MissingKeyError, ...); more: all of them.
        failure = errors[0] if len(errors) == 1 else AllProvidersFailed(errors)
        assert state is not None
        await self._emit_failed(state, failure)
        raise failure

    def _record(
        self,
        state: _Call,
        policy: Policy,
        *,
        ok: bool,
        usage: Any = None,
        error: AIError | None = None,
        model: str | None = None,
    ) -> CallRecord:
        record = CallRecord(
            call_id=state.id,
            attempt=state.attempt,
            operation=state.operation,
            provider=state.target.provider,
            model=model or state.target.model or self._default_model(state.target.provider),
            ok=ok,
            latency_ms=round((policy.clock() - state.started) * 1000, 3),
            input_tokens=getattr(usage, "input_tokens", 0) if usage else 0,
            output_tokens=getattr(usage, "output_tokens", 0) if usage else 0,
            error_kind=error.kind if error else None,
            error=error.message if error else None,
            status_code=error.status_code if error else None,
            at=state.at,
        )
        self.records.append(record)
        return record

    def _default_model(self, name: str) -> str:
        provider = self._plugin_providers.get(name) or (self._builtins or {}).get(name)
        return str(getattr(provider, "default_model", "") or "")

    async def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        if self.events is None:
            return
        try:
            await self.events.emit(event_type, data, source="ai")
        except Exception:  # an event that cannot be sent must not fail the AI call
            logger.exception("could not emit %s", event_type)

    async def _emit_completed(self, state: _Call) -> None:
        record = self.records[-1]
        await self._emit(
            COMPLETED,
            {
                "call_id": state.id,
                "analysis_type": state.operation,
                "operation": state.operation,
                "provider": record.provider,
                "model": record.model,
                "latency_ms": record.latency_ms,
                "input_tokens": record.input_tokens,
                "output_tokens": record.output_tokens,
                "fallback": state.fallback,
            },
        )

    async def _emit_failed(self, state: _Call, error: AIError) -> None:
        await self._emit(
            FAILED,
            {
                "call_id": state.id,
                "analysis_type": state.operation,
                "operation": state.operation,
                "provider": error.provider,
                "model": state.target.model or self._default_model(state.target.provider),
                "error_kind": error.kind,
                "error": error.message,
            },
        )

    # -- text ----------------------------------------------------------------------------

    def _request(
        self,
        prompt: str | None,
        messages: Iterable[Message | Mapping[str, Any]] | None,
        system: str | None,
        temperature: float | None,
        max_tokens: int | None,
        stop: str | Sequence[str] | None,
        json_mode: bool,
    ) -> CompletionRequest:
        built: list[Message] = []
        if system:
            built.append(Message("system", system))
        for message in messages or ():
            built.append(
                message
                if isinstance(message, Message)
                else Message(str(message["role"]), str(message["content"]))  # type: ignore[arg-type]
            )
        if prompt is not None:
            built.append(Message("user", prompt))
        if not any(m.role == "user" for m in built):
            raise AIError("give a prompt or at least one user message", kind="bad_request")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return CompletionRequest(
            built, temperature=temperature, max_tokens=max_tokens, stop=stops, json_mode=json_mode
        )

    async def complete(
        self,
        request: CompletionRequest,
        provider: str | None = None,
        *,
        api_key: str | None = None,
        fallbacks: bool = True,
        operation: str = "generate_text",
    ) -> CompletionResult:
        """Answer a :class:`CompletionRequest` (its ``model`` may be ``provider/model``)."""
        chain = self.targets(provider, request.model, CHAT, fallbacks=fallbacks)
        policy = self.policy

        async def call(p: Any, model: str, key: Secret | None) -> CompletionResult:
            started = policy.clock()
            result: CompletionResult = await p.complete(attrs.evolve(request, model=model), key)
            return attrs.evolve(result, latency_ms=round((policy.clock() - started) * 1000, 3))

        value, _ = await self._run(operation, chain, CHAT, call, api_key=api_key)
        result: CompletionResult = value
        return result

    async def generate_text(
        self,
        prompt: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        *,
        system: str | None = None,
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        json_mode: bool = False,
        api_key: str | None = None,
        fallbacks: bool = True,
    ) -> GeneratedText:
        """The answer's text: a ``str`` whose ``.result`` holds the provider, model, token
        usage, finish reason and latency. ``model`` may be ``"provider/model"``."""
        request = self._request(prompt, messages, system, temperature, max_tokens, stop, json_mode)
        request = attrs.evolve(request, model=model or "")
        result = await self.complete(request, provider, api_key=api_key, fallbacks=fallbacks)
        return GeneratedText(result)

    async def stream_text(
        self,
        prompt: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        *,
        system: str | None = None,
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        json_mode: bool = False,
        api_key: str | None = None,
        fallbacks: bool = True,
    ) -> AsyncIterator[StreamChunk]:
        """The answer as it is generated. Retries and fallbacks apply until the first chunk
        arrives; an error after that ends the stream with that error."""
        request = self._request(prompt, messages, system, temperature, max_tokens, stop, json_mode)
        chain = self.targets(provider, model, STREAM, fallbacks=fallbacks)

        async def open_stream(
            p: Any, model_id: str, key: Secret | None
        ) -> tuple[AsyncIterator[StreamChunk], StreamChunk | None]:
            chunks = p.stream(attrs.evolve(request, model=model_id), key)
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                return chunks, None
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _close(chunks)
                raise
            return chunks, first

        (chunks, first), state = await self._run(
            "stream_text", chain, STREAM, open_stream, api_key=api_key, finish=False
        )
        policy = self.policy
        usage = None
        model_used = ""
        try:
            chunk = first
            while chunk is not None:
                if chunk.usage is not None:
                    usage = chunk.usage
                model_used = chunk.model or model_used
                yield chunk
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    chunk = None
        except AIError as exc:
            self._record(state, policy, ok=False, error=exc, model=model_used or None)
            await self._emit_failed(state, exc)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await _close(chunks)
        self._record(state, policy, ok=True, usage=usage, model=model_used or None)
        await self._emit_completed(state)

    # -- structured ----------------------------------------------------------------------

    async def analyze_image(
        self,
        image: bytes | None = None,
        image_description: str | None = None,
        analysis_type: str = "condition_assessment",
        *,
        asset: Mapping[str, Any] | None = None,
        provider: str | None = None,
        model: str | None = None,
        media_type: str = "image/jpeg",
        api_key: str | None = None,
    ) -> ConditionFindings:
        """Condition findings from a photo (with a vision provider) and/or a description of
        what is seen, plus the asset's data. The ``local`` provider reads the description
        and the data only."""
        if image is None and not image_description and not asset:
            raise AIError("give an image, an image_description or an asset", kind="bad_request")
        chain = self.targets(provider, model, CHAT)
        if image is not None and not image_description and not asset:
            # The rule engine reads descriptions, not pixels: no use as a fallback here.
            chain = [t for t in chain if t.provider != "local" or t is chain[0]]

        async def call(p: Any, model_id: str, key: Secret | None) -> _Outcome:
            if isinstance(p, LocalProvider):
                if image is not None and not image_description and not asset:
                    raise CapabilityError(
                        "the local provider cannot see images: give image_description "
                        "(what the technician sees) or use a provider with vision",
                        provider=p.name,
                    )
                return _Outcome(
                    rules.assess_condition(
                        asset, image_description, as_of=p.as_of, analysis_type=analysis_type
                    ),
                    model="rules",
                )
            if image is not None and VISION not in capabilities_of(p):
                raise CapabilityError(
                    f"AI provider {p.name!r} cannot see images (no vision capability)",
                    provider=p.name,
                )
            prompt = structured.findings_prompt(analysis_type, image_description, asset)
            images = (Image(image, media_type),) if image is not None else ()

            def parse(result: CompletionResult) -> ConditionFindings:
                return structured.parse_findings(
                    result.text, provider=p.name, model=result.model, analysis_type=analysis_type
                )

            def by_rules(result: CompletionResult) -> ConditionFindings:
                observed = " ".join(x for x in (image_description, result.text) if x)
                return rules.assess_condition(
                    asset, observed, as_of=self._as_of, analysis_type=analysis_type
                )

            request = _json_request(
                structured.FINDINGS_INSTRUCTIONS, Message("user", prompt, images), model_id
            )
            return await self._ask_json(p, key, request, "condition findings", parse, by_rules)

        found, _ = await self._run(analysis_type, chain, CHAT, call, api_key=api_key)
        findings: ConditionFindings = found
        return findings

    async def analyze_asset(
        self,
        asset: Mapping[str, Any],
        observations: str | None = None,
        *,
        provider: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
    ) -> ConditionFindings:
        """Condition score, findings, recommendations and priority for an asset record."""
        return await self.analyze_image(
            image_description=observations,
            asset=asset,
            provider=provider,
            model=model,
            api_key=api_key,
        )

    async def draft_work_order(
        self,
        text: str,
        provider: str | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
    ) -> WorkOrderDraft:
        """A validated work-order draft from a technician's words."""
        draft, _, _ = await self._draft(text, provider, model, api_key)
        return draft

    async def _draft(
        self, text: str, provider: str | None, model: str | None, api_key: str | None
    ) -> tuple[WorkOrderDraft, str, str]:
        """The draft, the provider that made it and how (``model`` or ``rules``)."""
        if not text or not text.strip():
            raise AIError("the text to draft a work order from is empty", kind="bad_request")
        chain = self.targets(provider, model, CHAT)

        async def call(p: Any, model_id: str, key: Secret | None) -> _Outcome:
            if isinstance(p, LocalProvider):
                return _Outcome((rules.draft_work_order(text), p.name, "rules"), model="rules")

            def parse(result: CompletionResult) -> tuple[WorkOrderDraft, str, str]:
                return structured.parse_work_order(result.text), p.name, "model"

            def by_rules(result: CompletionResult) -> tuple[WorkOrderDraft, str, str]:
                return rules.draft_work_order(text), p.name, "rules"

            request = _json_request(
                structured.WORK_ORDER_INSTRUCTIONS, Message("user", text), model_id
            )
            return await self._ask_json(p, key, request, "work-order draft", parse, by_rules)

        value, _ = await self._run("work_order_draft", chain, CHAT, call, api_key=api_key)
        made: tuple[WorkOrderDraft, str, str] = value
        return made

    async def process_voice_to_text(
        self,
        audio: bytes | None = None,
        voice_text: str | None = None,
        *,
        provider: str | None = None,
        model: str | None = None,
        transcription_model: str | None = None,
        filename: str = "audio.wav",
        media_type: str = "audio/wav",
        api_key: str | None = None,
    ) -> VoiceResult:
        """The transcript (of ``audio``, or ``voice_text`` as given) and a validated
        work-order draft made from it."""
        if audio is None and not voice_text:
            raise AIError("give audio or voice_text", kind="bad_request")
        transcript = voice_text or ""
        if audio is not None and not voice_text:
            chain = self.targets(provider, transcription_model, TRANSCRIPTION)

            async def transcribe(p: Any, model_id: str, key: Secret | None) -> str:
                text: str = await p.transcribe(audio, model_id or None, key, filename, media_type)
                return text

            transcript, _ = await self._run(
                "transcription", chain, TRANSCRIPTION, transcribe, api_key=api_key
            )
        draft, by, how = await self._draft(transcript, provider, model, api_key)
        return VoiceResult(
            transcript=transcript,
            work_order=draft,
            provider=by if how == "model" else "local",
            model=self.records[-1].model if how == "model" else "rules",
            source=how,
        )

    async def _ask_json(
        self,
        provider: Any,
        key: Secret | None,
        request: CompletionRequest,
        what: str,
        parse: Callable[[CompletionResult], T],
        by_rules: Callable[[CompletionResult], T],
    ) -> _Outcome:
        """The model's answer to ``request``, parsed; when it does not parse, the rule
        engine's answer instead, so a weak model still gives a valid result."""
        result: CompletionResult = await provider.complete(request, key)
        try:
            value = parse(result)
        except ValueError as exc:
            logger.warning(
                "%s from %s is not valid (%s): the rule engine's answer is used",
                what,
                provider.name,
                exc,
            )
            value = by_rules(result)
        return _Outcome(value, result.usage, result.model)

    # -- embeddings ----------------------------------------------------------------------

    async def embed(
        self,
        texts: str | Sequence[str],
        provider: str | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
    ) -> list[list[float]]:
        """One vector per text. No fallback to another provider: vectors of different
        models do not mix."""
        items = [texts] if isinstance(texts, str) else list(texts)
        chain = self.targets(provider, model, EMBEDDINGS, fallbacks=False)

        async def call(p: Any, model_id: str, key: Secret | None) -> list[list[float]]:
            vectors: list[list[float]] = await p.embed(items, model_id or None, key)
            return vectors

        value, _ = await self._run("embed", chain, EMBEDDINGS, call, api_key=api_key)
        vectors: list[list[float]] = value
        return vectors

    # -- lifecycle -----------------------------------------------------------------------

    def calls(self, limit: int | None = None) -> list[CallRecord]:
        """The recorded attempts, oldest first (the newest ``limit``)."""
        records = list(self.records)
        return records[-limit:] if limit else records

    async def aclose(self) -> None:
        """Close every provider's connections (the platform does this when it stops)."""
        providers = [*self._retired, *(self._builtins or {}).values()]
        self._retired = []
        self._builtins = None
        for provider in [*providers, *self._plugin_providers.values()]:
            close = getattr(provider, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception:
                logger.exception("closing AI provider %r failed", getattr(provider, "name", "?"))


def _json_request(instructions: str, user: Message, model: str) -> CompletionRequest:
    """A request for one JSON object; temperature 0, so the same words give the same answer."""
    return CompletionRequest(
        [Message("system", instructions), user], model=model, json_mode=True, temperature=0
    )


async def _close(chunks: Any) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


def _unowned(register: Callable[[], Callable[[], None]]) -> Callable[[], None]:
    """Register a config watcher that belongs to the platform, not to the plugin whose hook
    happens to run when the service is first used."""
    from chatterfix.context import current_plugin_owner

    token = current_plugin_owner.set(None)
    try:
        return register()
    finally:
        current_plugin_owner.reset(token)


__all__ = ["BUILTIN_KEY_ENV", "AIService", "Policy", "Target", "split_model"]
