"""The AI service's data: messages, requests, results, stream chunks, findings and drafts.

Every type is a frozen attrs class; :data:`converter` (cattrs) turns them into JSON-ready
dictionaries and builds them back from untrusted dictionaries (model output, HTTP bodies),
with validation errors that say which field is wrong.
"""

from __future__ import annotations

import base64
from typing import Any, Literal, TypeVar

import attrs
import cattrs

T = TypeVar("T")
Role = Literal["system", "user", "assistant"]
ROLES = ("system", "user", "assistant")
PRIORITIES = ("low", "medium", "high", "critical")
CONDITIONS = ("good", "fair", "poor", "critical")

CHAT = "chat"
STREAM = "stream"
VISION = "vision"
TRANSCRIPTION = "transcription"
EMBEDDINGS = "embeddings"
CAPABILITIES = frozenset({CHAT, STREAM, VISION, TRANSCRIPTION, EMBEDDINGS})


def _non_empty(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise ValueError(f"{attribute.name} must not be empty")


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)}: {value!r}")

    return check


def _score(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not 1 <= value <= 10:
        raise ValueError(f"{attribute.name} must be a whole number from 1 to 10: {value!r}")


def _unit(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1: {value!r}")


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if value is not None else ()


@attrs.frozen
class Image:
    """An image sent to a vision model: raw bytes and their media type."""

    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")
    media_type: str = "image/jpeg"

    def data_url(self) -> str:
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode()}"

    def base64(self) -> str:
        return base64.b64encode(self.data).decode()


@attrs.frozen
class Message:
    """One chat message; ``images`` go with a user message to a vision model."""

    role: Role = attrs.field(validator=_one_of(ROLES))
    content: str
    images: tuple[Image, ...] = attrs.field(default=(), converter=_tuple)


@attrs.frozen
class CompletionRequest:
    """What a provider is asked: messages plus the generation options.

    ``model`` is the provider's own model id (no ``provider/`` prefix); empty means the
    provider's configured default. ``json_mode`` asks for one JSON object as the answer.
    """

    messages: tuple[Message, ...] = attrs.field(converter=_tuple)
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    json_mode: bool = False

    @messages.validator
    def _check_messages(self, attribute: attrs.Attribute[Any], value: tuple[Message, ...]) -> None:
        if not value:
            raise ValueError("a completion request needs at least one message")

    @property
    def prompt(self) -> str:
        """The text of the user messages, for providers that read text only."""
        return "\n\n".join(m.content for m in self.messages if m.role == "user")

    @property
    def system(self) -> str:
        return "\n\n".join(m.content for m in self.messages if m.role == "system")


@attrs.frozen
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@attrs.frozen
class CompletionResult:
    """A provider's answer. ``latency_ms`` is measured by the service around the call."""

    text: str
    provider: str
    model: str
    usage: Usage = Usage()
    finish_reason: str = "stop"
    latency_ms: float = 0.0


@attrs.frozen
class StreamChunk:
    """A piece of a streamed answer. The last chunk has ``finish_reason`` (and ``usage``
    when the provider reports it) and usually empty ``text``."""

    text: str
    provider: str = ""
    model: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


@attrs.frozen
class ConditionFindings:
    """A condition assessment of an asset, from its data, observations or an image."""

    condition_score: int = attrs.field(validator=_score)  # 10 = as new, 1 = failed
    condition: str = attrs.field(validator=_one_of(CONDITIONS))
    priority: str = attrs.field(validator=_one_of(PRIORITIES))
    findings: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    recommendations: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    asset_tags: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    analysis_type: str = "condition_assessment"
    confidence: float = attrs.field(default=0.5, validator=_unit)
    provider: str = "local"
    model: str = "rules"
    source: str = "rules"  # "rules" or "model"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@attrs.frozen
class WorkOrderDraft:
    """A work order as proposed from a technician's words, checked before anyone files it."""

    title: str = attrs.field(validator=_non_empty)
    description: str
    priority: str = attrs.field(validator=_one_of(PRIORITIES))
    asset_tags: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    asset_type: str | None = None
    location: str | None = None
    category: str = "general"
    observations: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    action: str = "inspect"
    due_within_hours: int | None = attrs.field(default=None)
    confidence: float = attrs.field(default=0.5, validator=_unit)

    @title.validator
    def _check_title(self, attribute: attrs.Attribute[Any], value: str) -> None:
        if len(value) > 120:
            raise ValueError("title must be at most 120 characters")

    @due_within_hours.validator
    def _check_due(self, attribute: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or value < 0):
            raise ValueError(f"due_within_hours must be a whole number >= 0: {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@attrs.frozen
class VoiceResult:
    """A transcript and the work-order draft made from it."""

    transcript: str
    work_order: WorkOrderDraft
    provider: str = "local"
    model: str = "rules"
    source: str = "rules"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@attrs.frozen
class CallRecord:
    """One attempt at one provider, as kept in ``platform.ai.records`` (never a key)."""

    call_id: int
    attempt: int
    operation: str
    provider: str
    model: str
    ok: bool
    latency_ms: float
    input_tokens: int = 0
    output_tokens: int = 0
    error_kind: str | None = None
    error: str | None = None
    status_code: int | None = None
    at: float = 0.0  # wall-clock time (seconds since the epoch) the attempt began

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


class GeneratedText(str):
    """The text of an answer (a plain ``str`` to the seed's code) with its details:
    ``.result`` is the :class:`CompletionResult` (provider, model, usage, latency)."""

    result: CompletionResult

    def __new__(cls, result: CompletionResult) -> GeneratedText:
        self = super().__new__(cls, result.text)
        self.result = result
        return self


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_unstructure_hook(bytes, lambda data: base64.b64encode(data).decode())
    conv.register_structure_hook(bytes, lambda value, _: base64.b64decode(value))
    return conv


converter = _make_converter()


def to_dict(value: Any) -> dict[str, Any]:
    """A JSON-ready form of any of these types."""
    data: dict[str, Any] = converter.unstructure(value)
    return data


def from_dict(data: Any, cls: type[T]) -> T:
    """Build ``cls`` from untrusted data; ``ValueError`` names what is wrong."""
    try:
        return converter.structure(data, cls)
    except cattrs.BaseValidationError as exc:
        raise ValueError("; ".join(cattrs.transform_error(exc, path=cls.__name__))) from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{cls.__name__}: {exc}") from None
