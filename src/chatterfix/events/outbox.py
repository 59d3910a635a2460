"""The transactional outbox: events published if, and only if, a database transaction commits.

An event emitted with ``emit_in(session, ...)`` is written to ``chatterfix_outbox`` in the
same transaction as the caller's own rows, so the two commit or roll back together. A relay
(one per process, in the platform's task group) publishes committed rows (local handlers,
persisted history, broker) and marks them sent. It is woken by each commit that wrote to
the outbox, runs once at start (what a process that died after committing left behind), and
looks every few seconds for rows another process left: at least once, never lost.

This module does not import SQLAlchemy; :mod:`chatterfix.events.store` does, when needed.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from chatterfix.events.bus import EventBus
    from chatterfix.events.model import Event
    from chatterfix.services.database import Database

logger = logging.getLogger("chatterfix.events")

# Set while a relay publishes: a handler that commits outbox events then leaves them to the
# drain already running (which picks them up next) rather than wait for it, forever.
_relaying: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "chatterfix_outbox_relaying", default=False
)
_SESSION_HOOKED = "chatterfix_outbox_hooked"


class Outbox:
    """The outbox of one platform process (``platform.events.outbox``)."""

    BATCH = 500  # rows leased and published per round
    SENT_KEPT = timedelta(days=1)  # sent rows stay this long, to show what left and when
    CLEANUP_EVERY = 3600.0  # seconds between deletions of old sent rows

    def __init__(
        self,
        bus: EventBus,
        database: Callable[[], Database],
        *,
        producer: str,
        claim_idle: float,
        start_soon: Callable[..., Any],
    ) -> None:
        self.bus = bus
        self._database = database
        self.producer = producer
        self.claim_idle = claim_idle
        # Rows of a process that died are looked for this often (seconds).
        self.poll = max(0.05, min(claim_idle, 5.0))
        self._start_soon = start_soon
        self._lease = f"{producer}-{secrets.token_hex(6)}"
        self._wake = anyio.Event()
        self._lock = anyio.Lock()
        self._table_ready = False
        self._relay: anyio.CancelScope | None = None
        self._relay_done: anyio.Event | None = None
        self._last_cleanup = 0.0
        self._closed = False

    @property
    def database(self) -> Database:
        return self._database()

    # -- writing ---------------------------------------------------------------------------

    async def add(self, session: AsyncSession, event: Event) -> None:
        """Write ``event`` to the outbox in ``session``'s transaction."""
        import sqlalchemy

        from chatterfix.events import store

        if not self._table_ready:
            # First use on this database: create the table in the caller's transaction, as
            # a connection of our own could wait on the caller's lock (SQLite has one writer).
            await session.run_sync(
                lambda sync: store.metadata.create_all(sync.connection(), tables=[store.outbox])
            )
        await session.execute(
            sqlalchemy.insert(store.outbox).values(store.outbox_row(event, self.producer))
        )
        if not session.info.get(_SESSION_HOOKED):
            session.info[_SESSION_HOOKED] = True
            sqlalchemy.event.listen(session.sync_session, "after_commit", self._committed)
        self.start()

    def _committed(self, _session: Any) -> None:
        self._wake.set()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A database session in a transaction; once it has committed, its outbox events
        are published before the block ends (inside a handler of a relayed event: right
        after that handler). Publishing that fails is logged and left to the relay: the
        transaction did commit, and the events will follow."""
        async with self.database.session() as session:
            yield session
        await self._drain_logged()

    # -- relaying --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the relay in the platform's task group, unless it runs already."""
        if self._relay_done is None and not self._closed:
            self._relay_done = anyio.Event()
            self._start_soon(self._run)

    async def _run(self) -> None:
        assert self._relay_done is not None
        try:
            if self._closed:
                return
            with anyio.CancelScope() as scope:
                self._relay = scope
                while not self._closed:
                    if self._table_ready or await self._find_table():
                        await self._drain_logged()
                    with anyio.move_on_after(self.poll):
                        await self._wake.wait()
                    self._wake = anyio.Event()
        finally:
            self._relay_done.set()

    async def _find_table(self) -> bool:
        """Whether the outbox table exists. The relay never creates it: the first
        ``emit_in`` does, in its own transaction, so that starting the platform writes
        nothing to the database."""
        from sqlalchemy import inspect
        from sqlalchemy.exc import SQLAlchemyError

        from chatterfix.events import store

        try:
            async with self.database.engine.connect() as connection:
                self._table_ready = await connection.run_sync(
                    lambda sync: inspect(sync).has_table(store.OUTBOX_TABLE)
                )
        except (SQLAlchemyError, OSError) as exc:
            logger.error("event outbox: the database cannot be used: %s", exc)
        return self._table_ready

    async def _drain_logged(self) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        from chatterfix.events.transports import TransportError

        try:
            await self.drain()
            if time.monotonic() - self._last_cleanup > self.CLEANUP_EVERY:
                from chatterfix.events import store

                self._last_cleanup = time.monotonic()
                await store.forget_sent(self.database, self.SENT_KEPT)
        except (SQLAlchemyError, OSError, TransportError) as exc:
            logger.error("event outbox: relaying failed, will retry: %s", exc)

    async def drain(self) -> int:
        """Publish every committed row this process may relay now; returns how many.

        Rows are leased for ``events.claim_idle`` seconds, published in the order they
        were written, then marked sent; a failure releases the lease of those not sent.
        """
        if _relaying.get():
            self._wake.set()  # the drain this handler runs in goes round again
            return 0
        from chatterfix.events import store

        token = _relaying.set(True)
        try:
            async with self._lock:
                count = 0
                while True:
                    if self._closed:  # shutting down: the rest waits for the next start
                        return count
                    events = await store.claim_outbox(
                        self.database,
                        producer=self.producer,
                        lease=self._lease,
                        claim_idle=self.claim_idle,
                        limit=self.BATCH,
                    )
                    if not events:
                        return count
                    sent: list[str] = []
                    try:
                        for event in events:
                            await self.bus.send(event)
                            sent.append(event.id)
                    finally:
                        with anyio.CancelScope(shield=True):
                            await store.finish_outbox(
                                self.database,
                                lease=self._lease,
                                sent=sent,
                                unsent=[event.id for event in events[len(sent) :]],
                            )
                    count += len(sent)
        finally:
            _relaying.reset(token)

    async def aclose(self) -> None:
        """Stop the relay; what it has not published stays for the next start."""
        self._closed = True
        self._wake.set()
        if self._relay_done is None:
            return
        # Stopped between steps rather than cancelled in one: a database call cancelled
        # midway leaves its connection to be torn down behind our back.
        with anyio.move_on_after(5):
            await self._relay_done.wait()
        if self._relay is not None:
            self._relay.cancel()
        with anyio.move_on_after(5):  # a relay that never got to run has nothing to stop
            await self._relay_done.wait()
