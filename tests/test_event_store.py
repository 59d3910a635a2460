"""Events in the shared database: the persisted history and the transactional outbox, on
SQLite and on the machine's PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from chatterfix import Event, Platform
from chatterfix.events.durable import HistoryUnavailable
from tests.helpers import free_port, require_service

pytestmark = pytest.mark.anyio

BROKER = "redis://127.0.0.1:6379/0"

work_orders_metadata = sa.MetaData()
work_orders = sa.Table(
    "work_orders",
    work_orders_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("title", sa.String(200), nullable=False),
)


def make_platform(database_url: str, **events: Any) -> Platform:
    config = {"database": {"url": database_url}, "events": {"group": "shop", **events}}
    return Platform(config=config, load_entrypoints=False, builtins=False)


async def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await anyio.sleep(0.02)
    raise TimeoutError(f"not reached within {seconds} s")


async def rows(platform: Platform, statement: Any) -> list[Any]:
    async with platform.database.engine.connect() as connection:
        return list((await connection.execute(statement)).all())


# -- the persisted history -------------------------------------------------------------------


async def test_the_history_survives_a_restart_and_is_queried_in_the_database(
    database_url: str, serve: Any
) -> None:
    before = make_platform(database_url, persist_history=True)
    async with before:
        created = await before.events.emit(
            "cmms.work_order.created", {"work_order_id": 1}, source="work_orders"
        )
        middle = datetime.now(UTC)
        await before.events.emit(
            "cmms.work_order.assigned",
            {"work_order_id": 1, "technician": "Ana"},
            source="dispatch",
            correlation_id="job-1",
        )
        await before.events.emit("cmms.asset.updated", {"asset_id": 4}, source="assets")

    after = make_platform(database_url, persist_history=True, history_size=2)  # memory: 2
    async with serve(after) as client:
        ours = [event for event in after.events.history if event.type.startswith("cmms.")]
        everything = await after.events.query("cmms.*")
        work_orders = await after.events.query("cmms.work_order.*")
        assigned = await after.events.query(correlation_id="job-1")
        from_assets = await after.events.query(source="assets")
        since_middle = await after.events.query("cmms.*", since=middle)
        until_middle = await after.events.query("cmms.*", until=middle)
        newest = await after.events.query("cmms.*", limit=1)
        following = await after.events.query("cmms.*", after=created.id)
        listed = (await client.get("/platform/events?type=cmms.work_order.*")).json()

    assert [event.type for event in ours] == ["cmms.work_order.assigned", "cmms.asset.updated"]
    assert everything[0] == created  # every field as emitted, the time in UTC included
    assert [e.type for e in everything] == [
        "cmms.work_order.created",
        "cmms.work_order.assigned",
        "cmms.asset.updated",
    ]
    assert [e.type for e in work_orders] == [
        "cmms.work_order.created",
        "cmms.work_order.assigned",
    ]
    assert [e.data for e in assigned] == [{"work_order_id": 1, "technician": "Ana"}]
    assert [e.type for e in from_assets] == ["cmms.asset.updated"]
    assert [e.type for e in since_middle] == ["cmms.work_order.assigned", "cmms.asset.updated"]
    assert [e.type for e in until_middle] == ["cmms.work_order.created"]
    assert [e.type for e in newest] == ["cmms.asset.updated"]
    assert [e.type for e in following] == ["cmms.work_order.assigned", "cmms.asset.updated"]
    assert [e["type"] for e in listed["events"]] == [
        "cmms.work_order.created",
        "cmms.work_order.assigned",
    ]


async def test_underscores_in_types_are_not_wildcards(database_url: str) -> None:
    platform = make_platform(database_url, persist_history=True)
    async with platform:
        await platform.events.emit("cmms.work_order.created", {})
        await platform.events.emit("cmms.workXorder.created", {})
        found = await platform.events.query("cmms.work_order.*")
    assert [event.type for event in found] == ["cmms.work_order.created"]


async def test_writes_are_batched_and_flushed_at_shutdown(database_url: str) -> None:
    platform = make_platform(database_url, persist_history=True)
    inserts: list[int] = []

    def count(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.startswith("INSERT INTO chatterfix_events"):
            inserts.append(len(params) if isinstance(params, list) else 1)

    async with platform:
        sa.event.listen(platform.database.engine.sync_engine, "before_cursor_execute", count)
        for number in range(300):  # no pause between them: the writer has not run yet
            await platform.events.emit("load.item", {"n": number})
    reopened = make_platform(database_url, persist_history=True)
    async with reopened:
        loaded = await reopened.events.query("load.*")
    assert [event.data["n"] for event in loaded] == list(range(300))
    assert len(inserts) == 1  # the 300 events went in one statement, written at shutdown


async def test_retention_keeps_the_newest_and_drops_the_too_old(database_url: str) -> None:
    platform = make_platform(
        database_url, persist_history=True, history_retention=5, history_retention_days=1.0
    )
    async with platform:
        old = Event(type="load.old", timestamp=datetime.now(UTC) - timedelta(days=2))
        await platform.events.send(old)
        for number in range(4):
            await platform.events.emit("load.item", {"n": number})
        assert platform.events.store is not None
        await platform.events.store.flush()
        await platform.events.store.prune()
        kept = await platform.events.query("load.*")
        for number in range(4, 12):
            await platform.events.emit("load.item", {"n": number})
    restarted = make_platform(database_url, persist_history=True, history_retention=5)
    async with restarted:  # retention is applied at start too
        newest = await restarted.events.query("load.*")
    assert [event.data["n"] for event in kept] == [0, 1, 2, 3]
    assert [event.data["n"] for event in newest] == [7, 8, 9, 10, 11]


async def test_a_persisted_history_without_its_database_fails_the_start() -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    platform = make_platform(unreachable, persist_history=True)
    with pytest.raises(HistoryUnavailable, match=r"events\.persist_history is on"):
        async with platform:
            pass


async def test_without_persistence_nothing_touches_the_database(tmp_path: Path) -> None:
    platform = Platform(load_entrypoints=False, builtins=False)
    async with platform:
        await platform.events.emit("cmms.asset.updated", {})
        found = await platform.events.query("cmms.*")
    assert [event.type for event in found] == ["cmms.asset.updated"]
    assert not (tmp_path / ".chatterfix" / "chatterfix.db").exists()


# -- the transactional outbox ----------------------------------------------------------------


async def prepared(database_url: str, **events: Any) -> tuple[Platform, list[Event]]:
    platform = make_platform(database_url, **events)
    heard: list[Event] = []
    platform.events.subscribe("cmms.*", heard.append)
    await platform.database.create_tables(work_orders_metadata)
    return platform, heard


async def test_a_committed_event_is_delivered_and_a_rolled_back_one_never(
    database_url: str,
) -> None:
    platform, heard = await prepared(database_url)
    async with platform:
        async with platform.events.transaction() as session:
            await session.execute(sa.insert(work_orders).values(id=1, title="Fix pump"))
            committed = await platform.events.emit_in(
                session, "cmms.work_order.created", {"work_order_id": 1}
            )
            assert heard == []  # not before the commit
        assert [event.id for event in heard] == [committed.id]  # delivered by the block's end

        with pytest.raises(RuntimeError, match="technician list is empty"):
            async with platform.events.transaction() as session:
                await session.execute(sa.insert(work_orders).values(id=2, title="Oil gearbox"))
                await platform.events.emit_in(
                    session, "cmms.work_order.created", {"work_order_id": 2}
                )
                raise RuntimeError("technician list is empty")
        assert platform.events.outbox is not None
        assert await platform.events.outbox.drain() == 0

        async with platform.database.session() as session:  # any session of the database
            await session.execute(sa.insert(work_orders).values(id=3, title="Check belts"))
            later = await platform.events.emit_in(
                session, "cmms.work_order.created", {"work_order_id": 3}
            )
        await wait_for(lambda: len(heard) == 2)  # the relay, woken by the commit
        saved = await rows(platform, sa.select(work_orders.c.id).order_by(work_orders.c.id))
        outbox = await rows(platform, sa.text("SELECT id, sent_at FROM chatterfix_outbox"))
    assert [event.id for event in heard] == [committed.id, later.id]
    assert [row.id for row in saved] == [1, 3]
    assert sorted(row.id for row in outbox) == sorted([committed.id, later.id])
    assert all(row.sent_at is not None for row in outbox)


async def test_events_committed_by_a_handler_of_a_relayed_event_follow_it(
    database_url: str,
) -> None:
    platform, heard = await prepared(database_url)

    async def assign(event: Event) -> None:
        async with platform.events.transaction() as session:
            await session.execute(
                sa.update(work_orders).where(work_orders.c.id == 1).values(title="Assigned")
            )
            await platform.events.emit_in(session, "cmms.work_order.assigned", {})

    platform.events.subscribe("cmms.work_order.created", assign)
    async with platform, platform.events.transaction() as session:
        await session.execute(sa.insert(work_orders).values(id=1, title="Fix pump"))
        created = await platform.events.emit_in(session, "cmms.work_order.created", {})
    assert [event.type for event in heard] == [
        "cmms.work_order.created",
        "cmms.work_order.assigned",
    ]
    assert heard[1].causation_id == created.id


CRASHING_WRITER = """
import os, sys
import anyio, sqlalchemy as sa
from chatterfix import Platform

url, group, work_order = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    platform = Platform(config={"database": {"url": url}, "events": {"group": group}},
                        load_entrypoints=False, builtins=False)
    async with platform:
        async with platform.database.session() as session:
            await session.execute(sa.text(
                f"INSERT INTO work_orders (id, title) VALUES ({work_order}, 'Fix pump')"))
            event = await platform.events.emit_in(
                session, "cmms.work_order.created", {"work_order_id": work_order})
            print(event.id, flush=True)
            # Die the moment the transaction has committed, before anything can relay it.
            sa.event.listen(session.sync_session, "after_commit", lambda _: os._exit(3))

anyio.run(main)
"""


def crash_after_commit(database_url: str, group: str, work_order: int) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, database_url, group, str(work_order)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    return done.stdout.strip()


async def test_an_event_committed_just_before_a_crash_is_delivered_at_the_next_start(
    database_url: str,
) -> None:
    platform, heard = await prepared(database_url)
    event_id = await anyio.to_thread.run_sync(crash_after_commit, database_url, "shop", 7)
    async with platform:  # the same process (events.group) starting again
        await wait_for(lambda: len(heard) == 1)
        saved = await rows(platform, sa.select(work_orders.c.title))
    assert [(event.id, event.data) for event in heard] == [(event_id, {"work_order_id": 7})]
    assert [row.title for row in saved] == ["Fix pump"]


async def test_another_process_takes_over_what_a_dead_one_left(database_url: str) -> None:
    platform, heard = await prepared(database_url, group="survivor", claim_idle=0.2)
    event_id = await anyio.to_thread.run_sync(crash_after_commit, database_url, "gone", 8)
    async with platform:
        await wait_for(lambda: len(heard) == 1)
    assert [event.id for event in heard] == [event_id]


async def test_outbox_events_reach_other_processes_through_the_broker(
    database_url: str,
) -> None:
    require_service(6379, "Redis")
    stream = f"chatterfix-test:{uuid.uuid4().hex[:12]}"
    writer, _ = await prepared(database_url, backend=BROKER, stream=stream, group="writer")
    reader = Platform(
        config={"events": {"backend": BROKER, "stream": stream, "group": "reader"}},
        load_entrypoints=False,
        builtins=False,
    )
    received: list[Event] = []
    reader.events.subscribe("cmms.*", received.append)
    try:
        async with reader, writer:
            async with writer.events.transaction() as session:
                await session.execute(sa.insert(work_orders).values(id=1, title="Fix pump"))
                sent = await writer.events.emit_in(session, "cmms.work_order.created", {})
            await wait_for(lambda: len(received) == 1)
    finally:
        import redis.asyncio as redis

        client = redis.from_url(BROKER)
        await client.delete(stream)
        await client.aclose()
    assert [event.id for event in received] == [sent.id]


async def test_emit_in_needs_a_running_platform(database_url: str) -> None:
    platform = make_platform(database_url)
    async with platform.database.session() as session:
        with pytest.raises(RuntimeError, match="needs a running platform"):
            await platform.events.emit_in(session, "cmms.work_order.created", {})
    await platform.database.aclose()
