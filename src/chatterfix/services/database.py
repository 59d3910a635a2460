"""The shared database: SQLAlchemy 2 (async), SQLite by default, PostgreSQL in production.

``execute_query`` keeps the original platform's call form (``?`` placeholders, a result
dict); ``engine`` and ``session()`` give full SQLAlchemy for real work.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from chatterfix.services.schema import (
    MigrationStep,
    SchemaChange,
    apply_schema,
    recorded_versions,
)

if TYPE_CHECKING:
    from chatterfix.config import Config

logger = logging.getLogger("chatterfix.database")

FETCH_MODES = ("one", "all", None)


def async_url(url: str) -> str:
    """The async-driver form of a database URL, as hosting platforms hand them out."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


def default_url(data_dir: str) -> str:
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{folder / 'chatterfix.db'}"


def configured_url(config: Config) -> str:
    """``database.url``, else ``DATABASE_URL``, else SQLite under ``platform.data_dir``."""
    return (
        str(config.get("database.url") or "")
        or os.environ.get("DATABASE_URL", "")
        or default_url(str(config.get("platform.data_dir")))
    )


def database_for(config: Config) -> Database:
    return Database(
        configured_url(config),
        pool_size=int(config.get("database.pool_size")),
        pre_ping=bool(config.get("database.pool_pre_ping")),
    )


class _ConnectionLost(Exception):
    """The connection broke before the statement's transaction could commit."""


def bind_placeholders(sql: str, params: Sequence[Any]) -> tuple[str, dict[str, Any], list[str]]:
    """Turn ``?`` placeholders (outside quotes) into named binds; lists expand for ``IN``.

    Values are always bound by the driver, never formatted into the statement.
    """
    pieces: list[str] = []
    names: list[str] = []
    quote: str | None = None
    for char in sql:
        if quote:
            quote = None if char == quote else quote
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            names.append(f"p{len(names)}")
            pieces.append(f":{names[-1]}")
            continue
        pieces.append(char)
    if len(names) != len(params):
        raise ValueError(
            f"the statement has {len(names)} placeholder(s) but {len(params)} parameter(s)"
        )
    values = dict(zip(names, params, strict=True))
    expanding = [name for name, value in values.items() if isinstance(value, list | tuple)]
    statement = "".join(pieces)
    for name in expanding:
        # SQLAlchemy writes the parentheses of an expanded list itself: "IN (?)" -> "IN :p0".
        statement = re.sub(rf"\(\s*:{name}\s*\)", f":{name}", statement)
    return statement, values, expanding


class Database:
    """The platform's database service (``platform.database``)."""

    def __init__(
        self, url: str, *, pool_size: int = 5, pre_ping: bool = False, echo: bool = False
    ) -> None:
        self.url = async_url(url)
        options: dict[str, Any] = {"echo": echo}
        if not self.url.startswith("sqlite"):
            # A ping costs a round trip per checkout; a dropped connection is handled instead
            # by retrying the statement once (execute_query) unless pre-ping is asked for.
            options["pool_size"] = pool_size
            options["pool_pre_ping"] = pre_ping
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_connect)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        # Transactions meant to write: on SQLite they take the write lock when they begin.
        self._writer = self.engine.execution_options(chatterfix_write=True)
        self._sessions = async_sessionmaker(self._writer, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection in a transaction meant to write, committed on success.

        On SQLite the transaction takes the database's write lock as it begins (``BEGIN
        IMMEDIATE``): one that reads and then writes waits for another writer to finish
        instead of failing with "database is locked". Read-only work can use
        ``engine.connect()``, which never waits for writers.
        """
        return self._writer.begin()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """An ``AsyncSession`` in a transaction meant to write (see :meth:`transaction`):
        committed on success, rolled back on error."""
        async with self._sessions() as session, session.begin():
            yield session

    async def execute_query(
        self, sql: str, params: Sequence[Any] | None = None, fetch: str | None = None
    ) -> dict[str, Any]:
        """Run one statement with ``?`` placeholders; the original platform's result form:
        ``{"success": True, "data": row-dict | list-of-row-dicts | None, "rowcount": n}``,
        or ``{"success": False, "error": message}`` (the statement is logged, never the
        parameters)."""
        if fetch not in FETCH_MODES:
            return {"success": False, "error": f"fetch must be 'one', 'all' or None, not {fetch!r}"}
        try:
            statement, values, expanding = bind_placeholders(sql, list(params or ()))
            clause = sqlalchemy.text(statement).bindparams(
                *[sqlalchemy.bindparam(name, expanding=True) for name in expanding]
            )
            try:
                return await self._run(clause, values, fetch, retry=True)
            except _ConnectionLost:
                logger.warning("database connection lost; retrying on a new connection")
                return await self._run(clause, values, fetch, retry=False)
        except (SQLAlchemyError, ValueError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            logger.error("query failed: %s (statement: %s)", reason, sql)
            return {"success": False, "error": reason}

    async def _run(
        self, clause: Any, values: dict[str, Any], fetch: str | None, *, retry: bool
    ) -> dict[str, Any]:
        async with self.engine.begin() as connection:
            try:
                result = await connection.execute(clause, values)
            except DBAPIError as exc:
                # Lost before the commit: the statement did not take effect, so it can run
                # again; a connection lost during the commit is not retried (unknown outcome).
                if retry and exc.connection_invalidated:
                    raise _ConnectionLost from exc
                raise
            data: Any = None
            if fetch == "one":
                row = result.mappings().first()
                data = dict(row) if row is not None else None
            elif fetch == "all":
                data = [dict(row) for row in result.mappings().all()]
            return {"success": True, "data": data, "rowcount": result.rowcount}

    async def health_check(self) -> dict[str, Any]:
        """Round trip to the database: ``{"status", "dialect", "latency_ms"}``; raises when
        the database cannot be reached."""
        began = time.perf_counter()
        async with self.engine.connect() as connection:
            await connection.execute(sqlalchemy.text("SELECT 1"))
        return {
            "status": "healthy",
            "dialect": self.dialect,
            "latency_ms": round((time.perf_counter() - began) * 1000, 2),
        }

    async def create_tables(self, metadata: sqlalchemy.MetaData) -> None:
        """Create the tables of ``metadata`` that are missing (existing ones are kept)."""
        async with self.transaction() as connection:
            await connection.run_sync(metadata.create_all)

    async def apply_schema(
        self,
        owner: str,
        tables: Sequence[sqlalchemy.Table],
        migrations: Mapping[int, MigrationStep] | None = None,
    ) -> SchemaChange:
        """Bring ``owner``'s tables to the schema version its code expects, in one
        transaction: create what is missing, run the migration steps not applied yet."""
        async with self.transaction() as connection:
            return await connection.run_sync(
                apply_schema, owner, list(tables), dict(migrations or {})
            )

    async def schema_versions(self) -> dict[str, int]:
        """The recorded schema version of every owner (plugin) of tables."""
        async with self.transaction() as connection:
            return await connection.run_sync(recorded_versions)

    async def aclose(self) -> None:
        await self.engine.dispose()


def _sqlite_connect(connection: Any, _record: Any) -> None:
    # The driver's own transaction handling begins only before DML, which would leave a
    # migration's DDL outside its transaction: transactions are begun explicitly instead.
    connection.isolation_level = None
    # WAL lets readers run alongside a writer; foreign keys are off in SQLite by default.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    writing = connection.get_execution_options().get("chatterfix_write")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")
