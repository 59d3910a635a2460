"""In-process event bus: subscriptions with priorities and wildcards, bounded history."""

from __future__ import annotations

import collections
import contextvars
import inspect
import itertools
import json
import logging
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import attrs

from chatterfix.context import current_plugin_owner, current_request_id

Handler = Callable[["Event"], Awaitable[Any] | Any]
logger = logging.getLogger("chatterfix.events")

_current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "chatterfix_current_event", default=None
)


@attrs.frozen(kw_only=True)
class Event:
    """Something that happened. ``data`` is JSON-serialisable."""

    type: str
    data: dict[str, Any] = attrs.field(factory=dict)
    source: str = ""
    id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    timestamp: datetime = attrs.field(factory=lambda: datetime.now(UTC))
    correlation_id: str | None = None
    causation_id: str | None = None
    priority: int = 0


@attrs.frozen
class Subscription:
    pattern: str
    handler: Handler
    priority: int
    owner: object | None
    order: int

    def matches(self, event_type: str) -> bool:
        return self.pattern == event_type or fnmatchcase(event_type, self.pattern)


@attrs.frozen
class HandlerFailure:
    event: Event
    handler: str
    error: str
    traceback: str


def handler_name(handler: Handler) -> str:
    module = getattr(handler, "__module__", "?")
    return f"{module}.{getattr(handler, '__qualname__', repr(handler))}"


class EventBus:
    """Publish/subscribe inside one process.

    ``await emit(...)`` returns after every matching handler ran, in priority order (higher
    first, then subscription order). A handler that raises is logged and recorded in
    ``failures``; the others still run.
    """

    def __init__(self, history_size: int = 1000) -> None:
        self._subscriptions: list[Subscription] = []
        self._order = itertools.count()
        self.history: collections.deque[Event] = collections.deque(maxlen=history_size)
        self.failures: collections.deque[HandlerFailure] = collections.deque(maxlen=history_size)

    def subscribe(
        self,
        event_type: str,
        handler: Handler | None = None,
        *,
        priority: int = 0,
        owner: object | None = None,
    ) -> Any:
        """Subscribe ``handler`` to ``event_type`` (wildcards allowed); usable as a decorator."""

        def add(function: Handler) -> Handler:
            subscription = Subscription(
                event_type,
                function,
                priority,
                owner if owner is not None else current_plugin_owner.get(),
                next(self._order),
            )
            self._subscriptions.append(subscription)
            self._subscriptions.sort(key=lambda item: (-item.priority, item.order))
            return function

        return add if handler is None else add(handler)

    def unsubscribe(self, event_type: str, handler: Handler) -> bool:
        before = len(self._subscriptions)
        self._subscriptions = [
            item
            for item in self._subscriptions
            if not (item.pattern == event_type and item.handler == handler)
        ]
        return len(self._subscriptions) != before

    def unsubscribe_owner(self, owner: object) -> int:
        """Drop every subscription made by ``owner`` (a plugin generation)."""
        before = len(self._subscriptions)
        self._subscriptions = [item for item in self._subscriptions if item.owner is not owner]
        return before - len(self._subscriptions)

    def take_owned(self, owner: object) -> list[Subscription]:
        """Remove and return ``owner``'s subscriptions (to renew them under another owner)."""
        taken = [item for item in self._subscriptions if item.owner is owner]
        if taken:
            self._subscriptions = [item for item in self._subscriptions if item.owner is not owner]
        return taken

    def restore(self, subscriptions: list[Subscription]) -> None:
        """Put back subscriptions taken with :meth:`take_owned`, in their original order."""
        self._subscriptions.extend(subscriptions)
        self._subscriptions.sort(key=lambda item: (-item.priority, item.order))

    def subscriptions(self, owner: object | None = None) -> list[Subscription]:
        return [item for item in self._subscriptions if owner is None or item.owner is owner]

    async def emit(
        self,
        event_type: str,
        data: dict[str, Any] | None = None,
        *,
        source: str = "",
        correlation_id: str | None = None,
        priority: int = 0,
    ) -> Event:
        """Create an event, run the matching handlers, and return the event."""
        payload = {} if data is None else data
        try:
            json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"event data for {event_type!r} is not JSON-serialisable: {exc}"
            ) from None
        cause = _current_event.get()
        event = Event(
            type=event_type,
            data=payload,
            source=source,
            correlation_id=correlation_id
            or (cause.correlation_id if cause else None)
            or current_request_id.get(),
            causation_id=cause.id if cause else None,
            priority=priority,
        )
        self.history.append(event)
        await self._dispatch(event)
        return event

    async def _dispatch(self, event: Event) -> None:
        token = _current_event.set(event)
        try:
            for subscription in [s for s in self._subscriptions if s.matches(event.type)]:
                await self._run(subscription, event)
        finally:
            _current_event.reset(token)

    async def _run(self, subscription: Subscription, event: Event) -> None:
        try:
            result = subscription.handler(event)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            name = handler_name(subscription.handler)
            logger.exception("event handler %s failed on %s", name, event.type)
            self.failures.append(HandlerFailure(event, name, str(exc), traceback.format_exc()))

    def find(
        self,
        event_type: str | None = None,
        *,
        source: str | None = None,
        correlation_id: str | None = None,
    ) -> Iterable[Event]:
        """Events from history matching every given filter, oldest first."""
        for event in self.history:
            if event_type and not fnmatchcase(event.type, event_type):
                continue
            if source and event.source != source:
                continue
            if correlation_id and event.correlation_id != correlation_id:
                continue
            yield event
