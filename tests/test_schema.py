"""Per-plugin schema versions and migrations, on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa

from chatterfix import Platform, hookimpl
from chatterfix.services.database import Database
from chatterfix.services.schema import schema_versions

pytestmark = pytest.mark.anyio


@pytest.fixture
async def name(database_url: str) -> AsyncIterator[str]:
    """A plugin name (and table prefix) of its own, cleaned up on the shared PostgreSQL."""
    plugin = f"migr_{uuid.uuid4().hex[:8]}"
    yield plugin

    def clean(connection: sa.Connection) -> None:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {plugin}_items"))
        if sa.inspect(connection).has_table(schema_versions.name):
            connection.execute(schema_versions.delete().where(schema_versions.c.owner == plugin))

    await on_database(database_url, clean)


async def on_database(url: str, work: Callable[[sa.Connection], Any]) -> None:
    database = Database(url)
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(work)
    finally:
        await database.aclose()


def items_table(name: str, metadata: sa.MetaData, *, version: int) -> sa.Table:
    columns = [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(100), nullable=False),
    ]
    if version >= 2:
        columns.append(sa.Column("priority", sa.String(10), server_default="normal"))
    if version >= 3:
        columns.append(sa.Column("site", sa.String(40)))
    return sa.Table(f"{name}_items", metadata, *columns)


def plugin(name: str, version: int, steps: dict[int, Callable[[Any], Any]]) -> object:
    class WorkOrders:
        PLUGIN_MANIFEST = {"name": name}

        @hookimpl
        def register_models(self, metadata: sa.MetaData) -> None:
            items_table(name, metadata, version=version)

        @hookimpl
        def register_migrations(self, platform: Platform) -> dict[int, Any]:
            return steps

    return WorkOrders()


def add_priority(name: str) -> Callable[[Any], None]:
    def step(op: Any) -> None:
        op.add_column(
            f"{name}_items", sa.Column("priority", sa.String(10), server_default="normal")
        )

    return step


def add_site(name: str) -> Callable[[Any], None]:
    def step(op: Any) -> None:
        op.add_column(f"{name}_items", sa.Column("site", sa.String(40)))
        op.execute(f"UPDATE {name}_items SET site = 'main'")

    return step


def failing(op: Any) -> None:
    raise RuntimeError("step 3 is broken")


async def run(url: str, *plugins: object) -> Platform:
    platform = Platform(config={"database": {"url": url}}, plugins=plugins, load_entrypoints=False)
    await platform.__aenter__()
    return platform


async def columns(platform: Platform, table: str) -> set[str]:
    async with platform.database.engine.connect() as connection:
        found = await connection.run_sync(lambda sync: sa.inspect(sync).get_columns(table))
    return {column["name"] for column in found}


async def test_hook_register_migrations_upgrades_keeping_rows(database_url: str, name: str) -> None:
    first = await run(database_url, plugin(name, 1, {}))
    try:
        assert first.plugins.get(name).schema_version == 1
        inserted = await first.database.execute_query(
            f"INSERT INTO {name}_items (id, title) VALUES (?, ?)", [1, "Replace pump seal"]
        )
        assert inserted["success"], inserted
    finally:
        await first.__aexit__(None, None, None)

    steps = {2: add_priority(name), 3: add_site(name)}
    second = await run(database_url, plugin(name, 3, steps))
    try:
        record = second.plugins.get(name)
        assert record.state.value == "running", record.error_message
        assert record.schema_version == 3
        assert (await second.database.schema_versions())[name] == 3
        row = await second.database.execute_query(
            f"SELECT title, priority, site FROM {name}_items WHERE id = ?", [1], fetch="one"
        )
        assert row["data"] == {"title": "Replace pump seal", "priority": "normal", "site": "main"}
    finally:
        await second.__aexit__(None, None, None)


async def test_a_fresh_database_gets_the_latest_tables_without_running_steps(
    database_url: str, name: str
) -> None:
    ran: list[int] = []
    steps = {2: lambda op: ran.append(2), 3: lambda op: ran.append(3)}
    platform = await run(database_url, plugin(name, 3, steps))
    try:
        assert platform.plugins.get(name).schema_version == 3
        assert ran == []
        assert {"id", "title", "priority", "site"} <= await columns(platform, f"{name}_items")
    finally:
        await platform.__aexit__(None, None, None)


async def test_a_failing_step_rolls_back_every_step_of_the_upgrade(
    database_url: str, name: str
) -> None:
    first = await run(database_url, plugin(name, 1, {}))
    await first.__aexit__(None, None, None)

    broken = await run(database_url, plugin(name, 3, {2: add_priority(name), 3: failing}))
    try:
        record = broken.plugins.get(name)
        assert record.state.value == "error"
        assert "step 3 is broken" in record.error_message
        assert (await broken.database.schema_versions())[name] == 1
        assert "priority" not in await columns(broken, f"{name}_items")
    finally:
        await broken.__aexit__(None, None, None)


async def test_a_database_newer_than_the_code_is_refused(database_url: str, name: str) -> None:
    newer = await run(database_url, plugin(name, 2, {2: add_priority(name)}))
    await newer.__aexit__(None, None, None)

    older = await run(database_url, plugin(name, 1, {}))
    try:
        record = older.plugins.get(name)
        assert record.state.value == "error"
        assert "schema version 2" in record.error_message
        assert "downgrades are not supported" in record.error_message
    finally:
        await older.__aexit__(None, None, None)


async def test_tables_from_before_versioning_count_as_version_one(
    database_url: str, name: str
) -> None:
    await on_database(database_url, items_table(name, sa.MetaData(), version=1).create)

    platform = await run(database_url, plugin(name, 2, {2: add_priority(name)}))
    try:
        assert platform.plugins.get(name).schema_version == 2
        assert "priority" in await columns(platform, f"{name}_items")
    finally:
        await platform.__aexit__(None, None, None)


async def test_migration_versions_are_checked(database_url: str, name: str) -> None:
    platform = await run(database_url, plugin(name, 1, {1: add_priority(name)}))
    try:
        record = platform.plugins.get(name)
        assert record.state.value == "error"
        assert "integers from 2 up" in record.error_message
    finally:
        await platform.__aexit__(None, None, None)
