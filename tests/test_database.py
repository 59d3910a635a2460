"""The shared database on SQLite (default) and on the machine's PostgreSQL."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from chatterfix import Platform, hookimpl
from chatterfix.services.database import async_url, bind_placeholders
from tests.helpers import require_service

pytestmark = pytest.mark.anyio

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
async def platform(database_url: str) -> AsyncIterator[Platform]:
    platform = Platform(
        config={"database": {"url": database_url}}, load_entrypoints=False, builtins=False
    )
    async with platform:
        yield platform


async def test_the_seed_integration_test_as_written(platform: Platform) -> None:
    from chatterfix import shared_services

    result = await shared_services.database.execute_query("SELECT 1 as test", fetch="one")
    assert result["success"] is True
    assert result["data"]["test"] == 1


async def test_placeholders_are_bound_never_formatted(platform: Platform) -> None:
    table = f"assets_{uuid.uuid4().hex[:8]}"
    db = platform.database
    try:
        created = await db.execute_query(
            f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT, status TEXT)"
        )
        assert created["success"], created
        for number, name in enumerate(["Pump 1", "Why? it's 'quoted'", "Robert'); DROP"], 1):
            inserted = await db.execute_query(
                f"INSERT INTO {table} (id, name, status) VALUES (?, ?, ?)",
                [number, name, "active" if number < 3 else "retired"],
            )
            assert inserted == {"success": True, "data": None, "rowcount": 1}
        active = await db.execute_query(
            f"SELECT id, name FROM {table} WHERE status = ? AND name <> '?' ORDER BY id",
            ["active"],
            fetch="all",
        )
        chosen = await db.execute_query(
            f"SELECT name FROM {table} WHERE id IN (?) ORDER BY id", [[1, 3]], fetch="all"
        )
        missing = await db.execute_query(
            f"SELECT name FROM {table} WHERE id = ?", [99], fetch="one"
        )
        updated = await db.execute_query(
            f"UPDATE {table} SET status = ? WHERE status = ?", ["inspected", "active"]
        )
    finally:
        await db.execute_query(f"DROP TABLE IF EXISTS {table}")
    assert active["data"] == [
        {"id": 1, "name": "Pump 1"},
        {"id": 2, "name": "Why? it's 'quoted'"},
    ]
    assert [row["name"] for row in chosen["data"]] == ["Pump 1", "Robert'); DROP"]
    assert missing == {"success": True, "data": None, "rowcount": missing["rowcount"]}
    assert updated["rowcount"] == 2


async def test_errors_are_results_and_parameters_stay_out_of_the_log(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="chatterfix.database"):
        failed = await platform.database.execute_query(
            "SELECT * FROM no_such_table WHERE password = ?", ["s3cret-value"], fetch="all"
        )
        mismatched = await platform.database.execute_query("SELECT ?", [1, 2], fetch="one")
        bad_fetch = await platform.database.execute_query("SELECT 1", fetch="many")
    assert failed["success"] is False
    assert "no_such_table" in failed["error"]
    assert mismatched == {
        "success": False,
        "error": "the statement has 1 placeholder(s) but 2 parameter(s)",
    }
    assert bad_fetch["success"] is False
    assert "s3cret-value" not in caplog.text
    assert "SELECT * FROM no_such_table WHERE password = ?" in caplog.text


async def test_health_check(platform: Platform, database_url: str) -> None:
    health = await platform.database.health_check()
    assert health["status"] == "healthy"
    assert health["dialect"] == ("sqlite" if database_url.startswith("sqlite") else "postgresql")


async def test_plugin_tables_are_created(database_url: str) -> None:
    table = f"work_orders_{uuid.uuid4().hex[:8]}"

    class WorkOrders:
        PLUGIN_MANIFEST = {"name": "work_orders"}

        @hookimpl
        def register_models(self, metadata: Any) -> None:
            sa.Table(
                table,
                metadata,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("title", sa.String(200), nullable=False),
            )

    platform = Platform(
        config={"database": {"url": database_url}},
        plugins=[WorkOrders()],
        load_entrypoints=False,
        builtins=False,
    )
    async with platform:
        db = platform.database
        try:
            await db.execute_query(f"INSERT INTO {table} (id, title) VALUES (?, ?)", [1, "Pump"])
            async with db.session() as session:
                titles = (await session.execute(sa.text(f"SELECT title FROM {table}"))).all()
        finally:
            await db.execute_query(f"DROP TABLE IF EXISTS {table}")
    assert [row.title for row in titles] == ["Pump"]


async def test_default_is_sqlite_in_wal_mode_under_the_data_dir(tmp_path: Path) -> None:
    platform = Platform(
        config={"platform": {"data_dir": str(tmp_path / "data")}},
        load_entrypoints=False,
        builtins=False,
    )
    async with platform:
        mode = await platform.database.execute_query("PRAGMA journal_mode", fetch="one")
    assert mode["data"] == {"journal_mode": "wal"}
    assert (tmp_path / "data" / "chatterfix.db").exists()


async def test_database_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'from_env.db'}")
    async with Platform(load_entrypoints=False, builtins=False) as platform:
        assert (await platform.database.execute_query("SELECT 2 AS two", fetch="one"))["data"] == {
            "two": 2
        }
    assert (tmp_path / "from_env.db").exists()


def test_hosting_style_urls_map_to_the_async_drivers() -> None:
    assert async_url("postgres://u:p@db:5432/cmms") == "postgresql+asyncpg://u:p@db:5432/cmms"
    assert async_url("postgresql://db/cmms") == "postgresql+asyncpg://db/cmms"
    assert async_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert bind_placeholders("a = ? AND b = '?'", [1]) == ("a = :p0 AND b = '?'", {"p0": 1}, [])


async def test_a_statement_survives_a_dropped_connection(tmp_path: Path) -> None:
    require_service(5432, "PostgreSQL")
    platform = Platform(
        config={"database": {"url": POSTGRES}}, load_entrypoints=False, builtins=False
    )
    async with platform:
        db = platform.database
        pid = (await db.execute_query("SELECT pg_backend_pid() AS pid", fetch="one"))["data"]
        killer = Platform(
            config={"database": {"url": POSTGRES}}, load_entrypoints=False, builtins=False
        )
        async with killer:
            killed = await killer.database.execute_query(
                "SELECT pg_terminate_backend(?) AS done", [pid["pid"]], fetch="one"
            )
        assert killed["data"] == {"done": True}
        again = await db.execute_query("SELECT pg_backend_pid() AS pid", fetch="one")
        assert again["success"], again
        assert again["data"]["pid"] != pid["pid"]


async def test_transactions_that_read_then_write_wait_for_each_other(platform: Platform) -> None:
    import anyio

    db = platform.database
    table = f"counters_{uuid.uuid4().hex[:8]}"
    assert (await db.execute_query(f"CREATE TABLE {table} (n INTEGER)"))["success"]

    async def add_one() -> None:
        async with db.transaction() as connection:
            count = await connection.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            await anyio.sleep(0.01)  # let the other tasks read the same count meanwhile
            await connection.execute(sa.text(f"INSERT INTO {table} (n) VALUES (:n)"), {"n": count})

    try:
        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(add_one)
        rows = await db.execute_query(f"SELECT n FROM {table} ORDER BY n", fetch="all")
        if db.dialect == "sqlite":  # one writer at a time: each saw the one before
            assert [row["n"] for row in rows["data"]] == list(range(10))
        else:
            assert len(rows["data"]) == 10
    finally:
        await db.execute_query(f"DROP TABLE {table}")
