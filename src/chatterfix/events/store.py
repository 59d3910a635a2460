"""Events in the shared database: the persisted history and the transactional outbox.

Both are platform-owned tables (``chatterfix_events``, ``chatterfix_outbox``) written with
SQLAlchemy Core, on SQLite and PostgreSQL alike. This module imports SQLAlchemy, so the
platform imports it only when one of them is in use.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from chatterfix.events.model import Event, check_pattern

if TYPE_CHECKING:
    from chatterfix.services.database import Database

logger = logging.getLogger("chatterfix.events")

HISTORY_TABLE = "chatterfix_events"
OUTBOX_TABLE = "chatterfix_outbox"


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A point in time, always read back in UTC. PostgreSQL keeps the zone; SQLite, which
    has no date type, gets UTC wall time, whose text form sorts like the times it holds."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        assert isinstance(moment, datetime)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


metadata = sa.MetaData()
# SQLite numbers rows itself only for an INTEGER primary key.
_Sequence = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _event_columns() -> list[sa.Column[Any]]:
    return [
        # The insertion order: what "oldest first" and "after this event" mean.
        sa.Column("seq", _Sequence, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(), nullable=False, unique=True),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("correlation_id", sa.String()),
        sa.Column("causation_id", sa.String()),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("data", _Json, nullable=False),
    ]


history = sa.Table(
    HISTORY_TABLE,
    metadata,
    *_event_columns(),
    sa.Index(f"ix_{HISTORY_TABLE}_type", "type"),
    sa.Index(f"ix_{HISTORY_TABLE}_time", "time"),
    sa.Index(f"ix_{HISTORY_TABLE}_correlation_id", "correlation_id"),
)

outbox = sa.Table(
    OUTBOX_TABLE,
    metadata,
    *_event_columns(),
    # The process that wrote the row (its events.group): it relays its own rows at once,
    # and the others take them over only once they have waited past events.claim_idle.
    sa.Column("producer", sa.String(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # A relay's lease on the row while it publishes it; an expired lease is free again.
    sa.Column("claimed_by", sa.String()),
    sa.Column("claimed_until", UTCDateTime()),
    sa.Column("sent_at", UTCDateTime()),
    sa.Index(f"ix_{OUTBOX_TABLE}_sent_at", "sent_at"),
)


EVENT_FIELDS = (
    "id",
    "type",
    "source",
    "time",
    "correlation_id",
    "causation_id",
    "priority",
    "data",
)


def event_row(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "time": event.timestamp,
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "priority": event.priority,
        "data": event.data,
    }


def row_event(row: Mapping[Any, Any]) -> Event:
    return Event(
        id=row["id"],
        type=row["type"],
        source=row["source"],
        timestamp=row["time"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        priority=row["priority"],
        data=row["data"],
    )


def insert_new(table: sa.Table, dialect: str) -> Any:
    """``INSERT`` that skips rows whose event id is already there: an event written twice
    (a relay retrying after a crash) stays one row."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["id"])
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=["id"])
    return sa.insert(table)


_COLUMNS = ", ".join(EVENT_FIELDS)
_DRIVER_INSERTS = {
    "sqlite": f"INSERT INTO {HISTORY_TABLE} ({_COLUMNS}) VALUES ({', '.join('?' * 8)}) "
    "ON CONFLICT (id) DO NOTHING",
    "postgresql": f"INSERT INTO {HISTORY_TABLE} ({_COLUMNS}) "
    f"VALUES ({', '.join(f'${n}' for n in range(1, 8))}, $8::jsonb) ON CONFLICT (id) DO NOTHING",
}


def _driver_row(event: Event, dialect: str) -> tuple[Any, ...]:
    """The parameters of one row as the driver takes them: JSON text for the data, and for
    SQLite the time in the text form SQLAlchemy reads back (UTC, to the microsecond)."""
    moment: Any = event.timestamp.astimezone(UTC)
    if dialect == "sqlite":
        moment = moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return (
        event.id,
        event.type,
        event.source,
        moment,
        event.correlation_id,
        event.causation_id,
        event.priority,
        json.dumps(event.data, separators=(",", ":")),
    )


def like_pattern(pattern: str) -> str:
    """A subscription pattern (``*`` wildcards) as a ``LIKE`` pattern escaped with ``\\``."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


async def create_tables(database: Database, *tables: sa.Table) -> None:
    async with database.transaction() as connection:
        await connection.run_sync(metadata.create_all, tables=list(tables))


class HistoryStore:
    """The history in the shared database.

    ``add`` only appends to a buffer, so emitting does not wait for the database; a writer
    task (:meth:`run`) inserts the buffer in one statement when it holds ``batch_size``
    events or when the oldest has waited ``interval`` seconds, and :meth:`aclose` writes
    what is left. If the database falls far behind (``max_pending`` events waiting), the
    emitter that finds the buffer full writes it itself: the history slows emitting down
    rather than grow without bound. While the database is failing, the oldest waiting
    events beyond ``max_pending`` are dropped (and counted in the log).

    Retention: the newest ``retention`` events are kept (0: no limit), and none older than
    ``retention_days`` (0: no limit); older rows are deleted every ``PRUNE_EVERY`` writes
    and at start.
    """

    PRUNE_EVERY = 1000
    RETRY_PAUSE = 1.0

    def __init__(
        self,
        database: Database,
        *,
        retention: int = 100_000,
        retention_days: float = 0.0,
        batch_size: int = 500,
        interval: float = 0.05,
        max_pending: int = 20_000,
    ) -> None:
        self.database = database
        self.retention = retention
        self.retention_days = retention_days
        self.batch_size = batch_size
        self.interval = interval
        self.max_pending = max_pending
        self._pending: list[Event] = []
        self._arrived = anyio.Event()
        self._full = anyio.Event()
        self._lock = anyio.Lock()
        self._written_since_prune = 0
        self._failing_until = 0.0
        self._dropped = 0
        self._writer: anyio.CancelScope | None = None
        self._writer_done = anyio.Event()
        self._stopping = anyio.Event()

    async def open(self, preload: int) -> list[Event]:
        """Create the table if missing, apply retention, and return the newest ``preload``
        events (oldest first), to refill the in-memory history after a restart."""
        await create_tables(self.database, history)
        await self.prune()
        return await self.query(limit=preload) if preload else []

    # -- writing ---------------------------------------------------------------------------

    def add(self, event: Event) -> bool:
        """Queue ``event`` for writing; True when the emitter should call :meth:`make_room`."""
        self._pending.append(event)
        waiting = len(self._pending)
        if waiting == 1:
            self._arrived.set()
        if waiting >= self.batch_size:
            self._full.set()
        return waiting >= self.max_pending

    async def make_room(self) -> None:
        """Write the buffer now (backpressure), unless the database is failing: then drop
        the oldest events beyond ``max_pending`` instead of stalling every emit."""
        if time.monotonic() >= self._failing_until:
            await self._write_logged()
        excess = len(self._pending) - self.max_pending
        if excess > 0:
            del self._pending[:excess]
            self._dropped += excess
            logger.error(
                "event history: the database is not keeping up; dropped the %d oldest "
                "unwritten events (%d in all)",
                excess,
                self._dropped,
            )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The writer: runs in the platform's task group until :meth:`aclose`."""
        try:
            with anyio.CancelScope() as scope:
                self._writer = scope
                task_status.started()
                while not self._stopping.is_set():
                    await self._arrived.wait()
                    with anyio.move_on_after(self.interval):
                        await self._full.wait()
                    if not await self._write_logged():
                        with anyio.move_on_after(self.RETRY_PAUSE):
                            await self._stopping.wait()
        finally:
            self._writer_done.set()

    async def flush(self) -> None:
        """Write everything waiting; raises if the database refuses."""
        async with self._lock:
            while self._pending:
                batch = self._take()
                try:
                    await self._insert(batch)
                except BaseException:
                    self._pending[:0] = batch  # not written: keep them, in order, for later
                    raise
        if self._written_since_prune >= self.PRUNE_EVERY:
            await self.prune()

    def _take(self) -> list[Event]:
        batch, self._pending = self._pending, []
        self._arrived = anyio.Event()
        self._full = anyio.Event()
        return batch

    async def _write_logged(self) -> bool:
        try:
            await self.flush()
        except (SQLAlchemyError, OSError) as exc:
            self._failing_until = time.monotonic() + self.RETRY_PAUSE
            logger.error("event history: writing %d events failed: %s", len(self._pending), exc)
            return False
        return True

    async def _insert(self, events: Sequence[Event]) -> None:
        dialect = self.database.dialect
        async with self.database.transaction() as connection:
            if dialect in _DRIVER_INSERTS:
                # Straight to the driver's executemany: SQLAlchemy's per-row parameter
                # processing would cost the emitting thread more than the write itself.
                rows = [_driver_row(event, dialect) for event in events]
                await connection.exec_driver_sql(_DRIVER_INSERTS[dialect], rows)
            else:
                statement = insert_new(history, dialect)
                await connection.execute(statement, [event_row(event) for event in events])
        self._written_since_prune += len(events)

    async def prune(self) -> int:
        """Delete what retention no longer keeps; returns the number of rows deleted."""
        self._written_since_prune = 0
        conditions = []
        async with self.database.engine.connect() as connection:
            # Look before deleting, so that a start with nothing to prune writes nothing.
            if self.retention > 0:
                oldest_kept = await connection.scalar(
                    sa.select(history.c.seq)
                    .order_by(history.c.seq.desc())
                    .offset(self.retention - 1)
                    .limit(1)
                )
                if oldest_kept is not None:
                    conditions.append(history.c.seq < oldest_kept)
            if self.retention_days > 0:
                cutoff = datetime.now(UTC) - timedelta(days=self.retention_days)
                conditions.append(history.c.time < cutoff)
            if not conditions or not await connection.scalar(
                sa.select(sa.exists().where(sa.or_(*conditions)))
            ):
                return 0
        async with self.database.transaction() as connection:
            result = await connection.execute(sa.delete(history).where(sa.or_(*conditions)))
        return max(result.rowcount, 0)

    async def aclose(self) -> None:
        """Stop the writer and write what is left (bounded: 10 s)."""
        if self._writer is not None:
            # Stopped between writes, not cancelled in one: a database call cancelled
            # midway leaves its connection to be torn down behind our back.
            self._stopping.set()
            self._arrived.set()
            self._full.set()
            with anyio.move_on_after(10):
                await self._writer_done.wait()
            self._writer.cancel()
            await self._writer_done.wait()
        with anyio.move_on_after(10):
            await self._write_logged()
        if self._pending:
            logger.error("event history: %d events could not be written", len(self._pending))

    # -- reading ---------------------------------------------------------------------------

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
        """Events matching every filter, oldest first (the newest ``limit`` with a limit);
        ``after`` keeps those recorded after the event with that id (all, if it is gone)."""
        await self._write_logged()  # what was emitted before the query is part of it
        statement = sa.select(history)
        if event_type and event_type != "*":
            check_pattern(event_type)
            statement = statement.where(
                history.c.type.like(like_pattern(event_type), escape="\\")
                if "*" in event_type
                else history.c.type == event_type
            )
        if source:
            statement = statement.where(history.c.source == source)
        if correlation_id:
            statement = statement.where(history.c.correlation_id == correlation_id)
        if since is not None:
            statement = statement.where(history.c.time >= since)
        if until is not None:
            statement = statement.where(history.c.time <= until)
        async with self.database.engine.connect() as connection:
            if after:
                seq = await connection.scalar(sa.select(history.c.seq).where(history.c.id == after))
                if seq is not None:
                    statement = statement.where(history.c.seq > seq)
            if limit:
                statement = statement.order_by(history.c.seq.desc()).limit(limit)
                rows = list(reversed((await connection.execute(statement)).mappings().all()))
            else:
                statement = statement.order_by(history.c.seq)
                rows = list((await connection.execute(statement)).mappings().all())
        return [row_event(row) for row in rows]


# -- the outbox ------------------------------------------------------------------------------


def outbox_row(event: Event, producer: str) -> dict[str, Any]:
    return {**event_row(event), "producer": producer, "created_at": datetime.now(UTC)}


def _claimable(producer: str, now: datetime, claim_idle: float) -> list[Any]:
    free = sa.or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now)
    # Another process's rows only once it has had claim_idle seconds to relay them itself.
    ours_or_stale = sa.or_(
        outbox.c.producer == producer,
        outbox.c.created_at < now - timedelta(seconds=claim_idle),
    )
    return [outbox.c.sent_at.is_(None), free, ours_or_stale]


async def claim_outbox(
    database: Database, *, producer: str, lease: str, claim_idle: float, limit: int
) -> list[Event]:
    """Lease up to ``limit`` unsent rows for ``claim_idle`` seconds, oldest first.

    One statement: the rows chosen are re-checked as they are updated, so two relays
    never lease the same row at once (PostgreSQL re-evaluates the conditions on a row
    another transaction has just leased; SQLite has one writer at a time).
    """
    now = datetime.now(UTC)
    conditions = _claimable(producer, now, claim_idle)
    async with database.engine.connect() as connection:
        # Look before writing: most rounds find nothing, and an idle relay that wrote every
        # time would get in the way of other SQLite writers for nothing.
        if await connection.scalar(sa.select(outbox.c.seq).where(*conditions).limit(1)) is None:
            return []
    chosen = sa.select(outbox.c.seq).where(*conditions).order_by(outbox.c.seq).limit(limit)
    statement = (
        sa.update(outbox)
        .where(outbox.c.seq.in_(chosen.scalar_subquery()), *conditions[:2])
        .values(claimed_by=lease, claimed_until=now + timedelta(seconds=claim_idle))
        .returning(outbox.c.seq, *[outbox.c[name] for name in EVENT_FIELDS])
    )
    async with database.transaction() as connection:
        rows = (await connection.execute(statement)).mappings().all()
    return [row_event(row) for row in sorted(rows, key=lambda row: row["seq"])]


async def finish_outbox(
    database: Database, *, lease: str, sent: Sequence[str], unsent: Sequence[str]
) -> None:
    """Mark the ``sent`` event ids sent, and give up the lease on the ``unsent`` ones."""
    async with database.transaction() as connection:
        if sent:
            await connection.execute(
                sa.update(outbox)
                .where(outbox.c.id.in_(list(sent)), outbox.c.claimed_by == lease)
                .values(sent_at=datetime.now(UTC), claimed_until=None)
            )
        if unsent:
            await connection.execute(
                sa.update(outbox)
                .where(outbox.c.id.in_(list(unsent)), outbox.c.claimed_by == lease)
                .values(claimed_until=None)
            )


async def forget_sent(database: Database, older_than: timedelta) -> int:
    """Delete rows sent more than ``older_than`` ago."""
    old = outbox.c.sent_at < datetime.now(UTC) - older_than
    async with database.engine.connect() as connection:  # look first: usually none
        if not await connection.scalar(sa.select(sa.exists().where(old))):
            return 0
    async with database.transaction() as connection:
        result = await connection.execute(sa.delete(outbox).where(old))
    return max(result.rowcount, 0)
