"""The event model, its validation, and its CloudEvents 1.0 wire form."""

from __future__ import annotations

import itertools
import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any

import attrs
import cattrs

TYPE_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
PATTERN_PATTERN = re.compile(r"\*|[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*")
CLOUDEVENTS_VERSION = "1.0"
DEFAULT_SOURCE = "chatterfix"


class EventError(ValueError):
    """An event that cannot be emitted: the message says which part is wrong."""


class _EventIds:
    """Unique event ids without a system call each: 64 random bits per process, then a
    counter (32 hex digits in all, like a UUID's), so ids never collide across processes."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


new_event_id = _EventIds()


@attrs.frozen(kw_only=True)
class Event:
    """Something that happened. ``data`` is a JSON object."""

    type: str
    data: dict[str, Any] = attrs.field(factory=dict)
    source: str = ""
    id: str = attrs.field(factory=new_event_id)
    timestamp: datetime = attrs.field(factory=lambda: datetime.now(UTC))
    correlation_id: str | None = None
    causation_id: str | None = None
    priority: int = 0


def check_type(event_type: Any) -> str:
    """A dotted event type such as ``cmms.work_order.created`` (no wildcards)."""
    if event_type in _valid_types:
        return str(event_type)
    if not isinstance(event_type, str) or not TYPE_PATTERN.fullmatch(event_type):
        raise EventError(
            f"event type {event_type!r} is not a dotted name such as 'cmms.work_order.created'"
        )
    if len(_valid_types) < 10_000:  # types seen are few; remembering them saves a regex
        _valid_types.add(event_type)
    return event_type


_valid_types: set[str] = set()


def check_pattern(pattern: Any) -> str:
    """A subscription pattern: an event type, or one with ``*`` wildcards."""
    if not isinstance(pattern, str) or not PATTERN_PATTERN.fullmatch(pattern):
        raise EventError(
            f"subscription pattern {pattern!r} is not an event type or a wildcard "
            "such as 'cmms.work_order.*' or '*'"
        )
    return pattern


def encode_data(event_type: str, data: Any, max_bytes: int) -> bytes:
    """The JSON encoding of ``data``, checked: an object, serialisable, not too large."""
    if not isinstance(data, dict):
        raise EventError(f"event data for {event_type!r} must be a JSON object (a dict)")
    try:
        encoded = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise EventError(f"event data for {event_type!r} is not JSON-serialisable: {exc}") from None
    if len(encoded) > max_bytes:
        raise EventError(
            f"event data for {event_type!r} is {len(encoded)} bytes; the limit is {max_bytes} "
            "(events.max_payload_bytes)"
        )
    return encoded


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    converter.register_unstructure_hook(
        datetime, lambda value: value.isoformat().replace("+00:00", "Z")
    )
    converter.register_structure_hook(datetime, lambda value, _: _parse_time(value))
    return converter


converter = _make_converter()


def to_cloudevent(event: Event) -> dict[str, Any]:
    """The CloudEvents 1.0 JSON envelope of ``event``; our own fields are extensions."""
    envelope: dict[str, Any] = {
        "specversion": CLOUDEVENTS_VERSION,
        "id": event.id,
        "source": event.source or DEFAULT_SOURCE,
        "type": event.type,
        "time": converter.unstructure(event.timestamp),
        "datacontenttype": "application/json",
        "data": event.data,
    }
    if event.correlation_id:
        envelope["correlationid"] = event.correlation_id
    if event.causation_id:
        envelope["causationid"] = event.causation_id
    if event.priority:
        envelope["priority"] = event.priority
    return envelope


def from_cloudevent(envelope: Any) -> Event:
    """Read a CloudEvents 1.0 JSON envelope (ours or another system's)."""
    if not isinstance(envelope, dict):
        raise EventError("a CloudEvent must be a JSON object")
    if envelope.get("specversion") != CLOUDEVENTS_VERSION:
        raise EventError(f"unsupported CloudEvents specversion {envelope.get('specversion')!r}")
    for field in ("id", "source", "type"):
        if not isinstance(envelope.get(field), str) or not envelope[field]:
            raise EventError(f"a CloudEvent needs a non-empty string {field!r}")
    # Built directly rather than through the converter: every event another process sends
    # is read here, and structuring it field by field cost more than all the rest.
    event_type = check_type(envelope["type"])
    time = envelope.get("time")
    data = envelope.get("data")
    try:
        return Event(
            type=event_type,
            id=envelope["id"],
            source=envelope["source"],
            data=data if isinstance(data, dict) else {},
            correlation_id=_optional_text(envelope.get("correlationid")),
            causation_id=_optional_text(envelope.get("causationid")),
            priority=int(envelope.get("priority", 0)),
            **({"timestamp": _parse_time(time)} if time else {}),
        )
    except (ValueError, TypeError) as exc:
        raise EventError(f"invalid CloudEvent: {exc}") from None


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
