"""Per-plugin schema versions and migrations.

Each plugin's tables have a version, recorded in ``chatterfix_schema_versions``. A plugin
declares its migrations with the ``register_migrations`` hook as ``{version: step}``; the
highest version is the one its current code expects (1 when it declares none). When the
plugin starts, :func:`apply_schema` brings the database to that version in one
transaction: on a fresh database the tables are created as the code declares them; on an
older one the missing steps run, in order, with an Alembic ``Operations`` object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import sqlalchemy
from sqlalchemy.engine import Connection

logger = logging.getLogger("chatterfix.database")

MigrationStep = Callable[[Any], Any]

versions_metadata = sqlalchemy.MetaData()
schema_versions = sqlalchemy.Table(
    "chatterfix_schema_versions",
    versions_metadata,
    sqlalchemy.Column("owner", sqlalchemy.String(200), primary_key=True),
    sqlalchemy.Column("version", sqlalchemy.Integer, nullable=False),
    sqlalchemy.Column("updated_at", sqlalchemy.DateTime(timezone=True), nullable=False),
)


class SchemaError(RuntimeError):
    """The database's schema for a plugin cannot be brought to what its code expects."""


@attrs.frozen
class SchemaChange:
    """What :func:`apply_schema` did for one owner."""

    owner: str
    previous: int | None
    version: int
    applied: tuple[int, ...] = ()
    created: tuple[str, ...] = ()


def target_version(migrations: Mapping[int, MigrationStep]) -> int:
    return max(migrations, default=1)


def check_migrations(owner: str, migrations: Mapping[Any, Any]) -> dict[int, MigrationStep]:
    """Validate what a ``register_migrations`` hook returned."""
    steps: dict[int, MigrationStep] = {}
    for version, step in migrations.items():
        if isinstance(version, bool) or not isinstance(version, int) or version < 2:
            raise SchemaError(
                f"{owner}: migration versions are integers from 2 up (1 is the schema "
                f"without migrations), got {version!r}"
            )
        if not callable(step):
            raise SchemaError(f"{owner}: migration {version} is not callable: {step!r}")
        steps[version] = step
    return steps


def apply_schema(
    connection: Connection,
    owner: str,
    tables: Sequence[sqlalchemy.Table],
    migrations: Mapping[int, MigrationStep],
) -> SchemaChange:
    """Bring ``owner``'s tables to the version its code expects (run inside a transaction,
    through ``AsyncConnection.run_sync``)."""
    versions_metadata.create_all(connection, checkfirst=True)
    target = target_version(migrations)
    recorded = connection.execute(
        sqlalchemy.select(schema_versions.c.version).where(schema_versions.c.owner == owner)
    ).scalar_one_or_none()
    inspector = sqlalchemy.inspect(connection)
    existing = {table.name for table in tables if inspector.has_table(table.name)}
    # Tables that exist without a recorded version predate versioning: they are version 1.
    current = recorded if recorded is not None else (1 if existing else None)
    if current is not None and current > target:
        raise SchemaError(
            f"the database holds schema version {current} of {owner!r}, newer than the "
            f"version {target} its code expects; downgrades are not supported"
        )
    applied: list[int] = []
    if current is not None and current < target:
        operations = _operations(connection)
        for version in sorted(v for v in migrations if current < v <= target):
            logger.info("%s: migrating schema to version %d", owner, version)
            migrations[version](operations)
            applied.append(version)
    created = [table for table in tables if table.name not in existing]
    if created:
        tables[0].metadata.create_all(connection, tables=created, checkfirst=True)
    if recorded != target:
        _record(connection, owner, target, recorded is None)
    return SchemaChange(
        owner, current, target, tuple(applied), tuple(table.name for table in created)
    )


def recorded_versions(connection: Connection) -> dict[str, int]:
    versions_metadata.create_all(connection, checkfirst=True)
    rows = connection.execute(sqlalchemy.select(schema_versions.c.owner, schema_versions.c.version))
    return {owner: version for owner, version in rows}


def _operations(connection: Connection) -> Any:
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    return Operations(MigrationContext.configure(connection))


def _record(connection: Connection, owner: str, version: int, new: bool) -> None:
    values = {"version": version, "updated_at": datetime.now(UTC)}
    if new:
        connection.execute(schema_versions.insert().values(owner=owner, **values))
    else:
        connection.execute(
            schema_versions.update().where(schema_versions.c.owner == owner).values(**values)
        )
