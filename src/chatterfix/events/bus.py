"""In-process event bus: priorities, wildcards, retries, dead letters, bounded history."""

from __future__ import annotations

import collections
import contextlib
import inspect
import itertools
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from chatterfix.context import current_event as _current_event
from chatterfix.context import current_plugin_owner, current_request_id
from chatterfix.events.catalog import SystemEvents
from chatterfix.events.model import Event, check_pattern, check_type, encode_data

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from chatterfix.events.outbox import Outbox
    from chatterfix.events.store import HistoryStore
    from chatterfix.events.transports import Transport

Handler = Callable[[Event], Awaitable[Any] | Any]
REMEMBERED_IDS = 100_000  # enough to cover any redelivery window of a broker
COUNTED_TYPES = 1000  # distinct event types counted by name; the rest as "other"
logger = logging.getLogger("chatterfix.events")


@attrs.frozen
class Subscription:
    pattern: str
    handler: Handler
    priority: int
    owner: object | None
    order: int

    def matches(self, event_type: str) -> bool:
        return self.pattern == event_type or fnmatchcase(event_type, self.pattern)


@attrs.frozen(kw_only=True)
class DeadLetter:
    """An event one handler could not process, after every retry."""

    id: int
    event: Event
    handler: str
    error: str
    traceback: str
    attempts: int
    failed_at: datetime


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often a failing handler is tried, and how long to wait between tries."""

    attempts: int = 3
    backoff: float = 0.01  # seconds before the second try; doubles for each further one

    def delays(self) -> Iterator[float]:
        for attempt in range(self.attempts - 1):
            yield self.backoff * (2**attempt)


def handler_name(handler: Handler) -> str:
    module = getattr(handler, "__module__", "?")
    return f"{module}.{getattr(handler, '__qualname__', repr(handler))}"


class EventBus:
    """Publish/subscribe inside one process.

    ``await emit(...)`` returns after every matching handler ran, in priority order (higher
    first, then subscription order). A handler that raises is retried with backoff; when it
    has failed every try, the event goes to the dead letters with the error and
    ``system.event.handler_failed`` is emitted. The other handlers run regardless.
    """

    def __init__(
        self,
        history_size: int = 1000,
        *,
        retry: RetryPolicy | None = None,
        max_payload_bytes: int = 256 * 1024,
    ) -> None:
        self._subscriptions: list[Subscription] = []
        # Which subscriptions each event type reaches, worked out once per type.
        self._routes: dict[str, list[Subscription]] = {}
        self._order = itertools.count()
        self._dead_letter_ids = itertools.count(1)
        self.retry = retry or RetryPolicy()
        self.max_payload_bytes = max_payload_bytes
        self.history: collections.deque[Event] = collections.deque(maxlen=history_size)
        self.dead_letters: collections.deque[DeadLetter] = collections.deque(maxlen=history_size)
        # Set by the platform when events.backend names a broker.
        self.transport: Transport | None = None
        # Set by the platform when events.persist_history is on.
        self.store: HistoryStore | None = None
        # Set by the platform while it runs.
        self.outbox: Outbox | None = None
        # Ids of the events delivered here, newest last: a broker delivers at least once.
        self._delivered: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Events published here by type (the gateway's /metrics); bounded: types past the
        # first COUNTED_TYPES are counted as "other".
        self.type_counts: dict[str, int] = {}

    # -- subscriptions ---------------------------------------------------------------------

    def subscribe(
        self,
        event_type: str,
        handler: Handler | None = None,
        *,
        priority: int = 0,
        owner: object | None = None,
    ) -> Any:
        """Subscribe ``handler`` to ``event_type`` (wildcards allowed); usable as a decorator."""
        check_pattern(event_type)

        def add(function: Handler) -> Handler:
            subscription = Subscription(
                event_type,
                function,
                priority,
                owner if owner is not None else current_plugin_owner.get(),
                next(self._order),
            )
            self.restore([subscription])
            return function

        return add if handler is None else add(handler)

    def unsubscribe(self, event_type: str, handler: Handler) -> bool:
        before = len(self._subscriptions)
        self._subscriptions = [
            item
            for item in self._subscriptions
            if not (item.pattern == event_type and item.handler == handler)
        ]
        self._routes.clear()
        return len(self._subscriptions) != before

    def unsubscribe_owner(self, owner: object) -> int:
        """Drop every subscription made by ``owner`` (a plugin generation)."""
        return len(self.take_owned(owner))

    def take_owned(self, owner: object) -> list[Subscription]:
        """Remove and return ``owner``'s subscriptions (to renew them under another owner)."""
        taken = [item for item in self._subscriptions if item.owner is owner]
        if taken:
            self._subscriptions = [item for item in self._subscriptions if item.owner is not owner]
            self._routes.clear()
        return taken

    def restore(self, subscriptions: list[Subscription]) -> None:
        """Add subscriptions (back), keeping priority order, then subscription order."""
        self._subscriptions = sorted(
            [*self._subscriptions, *subscriptions], key=lambda item: (-item.priority, item.order)
        )
        self._routes.clear()

    def subscriptions(self, owner: object | None = None) -> list[Subscription]:
        return [item for item in self._subscriptions if owner is None or item.owner is owner]

    # -- emitting --------------------------------------------------------------------------

    async def emit(
        self,
        event_type: str,
        data: dict[str, Any] | None = None,
        *,
        source: str = "",
        correlation_id: str | None = None,
        priority: int = 0,
    ) -> Event:
        """Create an event, run the matching handlers, and return the event.

        The correlation id defaults to that of the event being handled (when a handler
        emits), else to the current gateway request's id.
        """
        event = self.new_event(
            event_type, data, source=source, correlation_id=correlation_id, priority=priority
        )
        # What send() does, inline: emit is the hot path, and a new event is new here.
        self._remember(event.id)
        if self.store is not None and self.store.add(event):
            await self.store.make_room()
        await self.publish(event)
        if self.transport is not None:
            await self.transport.publish(event)
        return event

    def new_event(
        self,
        event_type: str,
        data: dict[str, Any] | None = None,
        *,
        source: str = "",
        correlation_id: str | None = None,
        priority: int = 0,
    ) -> Event:
        """A checked event with its correlation and causation filled in, not yet sent."""
        check_type(event_type)
        payload = {} if data is None else data
        encode_data(event_type, payload, self.max_payload_bytes)
        cause = _current_event.get()
        return Event(
            type=event_type,
            data=payload,
            source=source,
            correlation_id=correlation_id
            or (cause.correlation_id if cause else None)
            or current_request_id.get(),
            causation_id=cause.id if cause else None,
            priority=priority,
        )

    async def send(self, event: Event) -> None:
        """Deliver an event made in this process: to the local handlers (once, even if it
        is sent again), to the persisted history, then to the broker."""
        if event.id not in self._delivered:
            self._remember(event.id)
            if self.store is not None and self.store.add(event):
                await self.store.make_room()
            await self.publish(event)
        if self.transport is not None:
            await self.transport.publish(event)

    async def emit_in(
        self,
        session: AsyncSession,
        event_type: str,
        data: dict[str, Any] | None = None,
        *,
        source: str = "",
        correlation_id: str | None = None,
        priority: int = 0,
    ) -> Event:
        """Emit as part of the database transaction ``session`` is in (the transactional
        outbox): the event is published, to local handlers and the broker, if and only if
        that transaction commits, shortly after it does, even if this process dies first.
        Returns the event, not yet delivered."""
        event = self.new_event(
            event_type, data, source=source, correlation_id=correlation_id, priority=priority
        )
        await self._running_outbox().add(session, event)
        return event

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        """``async with platform.events.transaction() as session:`` a session of the shared
        database in a transaction, committed at the end of the block; the events emitted in
        it with :meth:`emit_in` have been delivered when the block ends."""
        return self._running_outbox().transaction()

    def _running_outbox(self) -> Outbox:
        if self.outbox is None:
            raise RuntimeError(
                "the transactional outbox needs a running platform (`async with platform:`)"
            )
        return self.outbox

    async def receive(self, event: Event) -> None:
        """An event from another process: delivered here once, whatever the broker does."""
        if event.id in self._delivered:
            return
        self._remember(event.id)
        await self.publish(event)

    def _remember(self, event_id: str) -> None:
        self._delivered[event_id] = None
        if len(self._delivered) > REMEMBERED_IDS:
            self._delivered.popitem(last=False)

    async def publish(self, event: Event) -> None:
        """Record an existing event in history and run the matching handlers."""
        self.history.append(event)
        counts = self.type_counts
        kind = event.type if event.type in counts or len(counts) < COUNTED_TYPES else "other"
        counts[kind] = counts.get(kind, 0) + 1
        route = self._routes.get(event.type)
        if route is None:
            route = self._routes[event.type] = [
                s for s in self._subscriptions if s.matches(event.type)
            ]
        token = _current_event.set(event)
        emitter = current_plugin_owner.get()
        try:
            for subscription in route:
                if subscription.owner is emitter:
                    await self._deliver(subscription.handler, event)
                    continue
                # The handler's plugin is the one whose code runs: what it logs names that
                # plugin, and what it subscribes belongs to it, not to the emitting plugin.
                owner = current_plugin_owner.set(subscription.owner)
                try:
                    await self._deliver(subscription.handler, event)
                finally:
                    current_plugin_owner.reset(owner)
        finally:
            _current_event.reset(token)

    async def _deliver(self, handler: Handler, event: Event) -> bool:
        """Run one handler on one event, with retries; dead-letter it if all tries fail."""
        delays: Iterator[float] | None = None
        attempts = 0
        while True:
            attempts += 1
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
                return True
            except (Exception, SystemExit) as exc:  # a handler must not end the process
                delays = delays or self.retry.delays()
                delay = next(delays, None)
                if delay is None:
                    await self._dead_letter(handler, event, exc, attempts)
                    return False
                logger.warning(
                    "event handler %s failed on %s (try %d): %s",
                    handler_name(handler),
                    event.type,
                    attempts,
                    exc,
                )
                await anyio.sleep(delay)

    async def _dead_letter(
        self, handler: Handler, event: Event, exc: BaseException, attempts: int
    ) -> None:
        name = handler_name(handler)
        logger.exception(
            "event handler %s gave up on %s after %d tries", name, event.type, attempts
        )
        letter = DeadLetter(
            id=next(self._dead_letter_ids),
            event=event,
            handler=name,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=-8),
            attempts=attempts,
            failed_at=datetime.now(UTC),
        )
        self.dead_letters.append(letter)
        if event.type != SystemEvents.EVENT_HANDLER_FAILED:  # never a loop of failure reports
            await self.emit(
                SystemEvents.EVENT_HANDLER_FAILED,
                {
                    "event_id": event.id,
                    "event_type": event.type,
                    "handler": name,
                    "error": letter.error,
                    "attempts": attempts,
                    "dead_letter_id": letter.id,
                },
                source="platform",
            )

    async def replay_dead_letters(self, ids: list[int] | None = None) -> dict[int, bool]:
        """Hand dead letters (all, or those with ``ids``) to their handlers again.

        A letter whose handler now succeeds is removed; one whose handler is no longer
        subscribed stays. Returns ``{dead_letter_id: succeeded}``.
        """
        chosen = [letter for letter in self.dead_letters if ids is None or letter.id in ids]
        outcome: dict[int, bool] = {}
        for letter in chosen:
            subscription = next(
                (
                    item
                    for item in self._subscriptions
                    if handler_name(item.handler) == letter.handler
                    and item.matches(letter.event.type)
                ),
                None,
            )
            self.dead_letters.remove(letter)
            if subscription is None:
                self.dead_letters.append(letter)
                outcome[letter.id] = False
                continue
            token = _current_event.set(letter.event)
            owner = current_plugin_owner.set(subscription.owner)
            try:
                outcome[letter.id] = await self._deliver(subscription.handler, letter.event)
            finally:
                current_plugin_owner.reset(owner)
                _current_event.reset(token)
        return outcome

    # -- history ---------------------------------------------------------------------------

    def find(
        self,
        event_type: str | None = None,
        *,
        source: str | None = None,
        correlation_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Events from history matching every given filter, oldest first (the newest
        ``limit`` of them when a limit is given). ``event_type`` may be a wildcard; a time
        without a zone is taken as UTC."""
        since, until = _utc(since), _utc(until)
        found = [
            event
            for event in self.history
            if (not event_type or fnmatchcase(event.type, event_type))
            and (not source or event.source == source)
            and (not correlation_id or event.correlation_id == correlation_id)
            and (since is None or event.timestamp >= since)
            and (until is None or event.timestamp <= until)
        ]
        return found[-limit:] if limit else found

    async def query(
        self,
        event_type: str | None = None,
        *,
        source: str | None = None,
        correlation_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Like :meth:`find`, from the shared database when the history is persisted
        (``events.persist_history``), else from memory. ``after`` keeps the events recorded
        after the one with that id (all of them if it is no longer kept)."""
        if self.store is not None:
            return await self.store.query(
                event_type,
                source=source,
                correlation_id=correlation_id,
                since=since,
                until=until,
                after=after,
                limit=limit,
            )
        found = self.find(
            event_type, source=source, correlation_id=correlation_id, since=since, until=until
        )
        if after:
            ids = [event.id for event in found]
            if after in ids:
                found = found[ids.index(after) + 1 :]
        return found[-limit:] if limit else found


def _utc(moment: datetime | None) -> datetime | None:
    """Event times are in UTC; a time without a zone is taken to be UTC too (comparing
    the two kinds would raise)."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment
