from __future__ import annotations

import json
import secrets
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _data_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Platforms built by tests keep their SQLite database in the test's own folder."""
    monkeypatch.setenv("CHATTERFIX_DATA_DIR", str(tmp_path / ".chatterfix"))
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture
def make_folder_plugin(tmp_path: Path) -> Callable[..., Path]:
    """Write ``<plugins>/<name>/{plugin.json, main.py}`` and return the plugins folder."""
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)

    def make(name: str, code: str = "", manifest: dict[str, Any] | None = None) -> Path:
        target = folder / name
        target.mkdir()
        data = {"name": name, "version": "1.0.0"} if manifest is None else manifest
        (target / "plugin.json").write_text(json.dumps(data))
        if code is not None:
            (target / "main.py").write_text(textwrap.dedent(code))
        return folder

    return make


@pytest.fixture
def serve() -> Callable[..., Any]:
    """``async with serve(platform) as client``: start the platform, talk to its gateway.

    The client sends an administrator's API token, as an operator managing the platform
    would; ``serve(platform, admin=False)`` gives an anonymous client.
    """
    import contextlib
    import secrets

    import httpx

    @contextlib.asynccontextmanager
    async def run(platform: Any, *, admin: bool = True) -> Any:
        async with platform:
            headers = {}
            if admin:
                user = await platform.auth.create_user(
                    username=f"admin-{secrets.token_hex(4)}", roles=["admin"]
                )
                issued = await platform.auth.create_token(user.id, "tests")
                headers["Authorization"] = f"Bearer {issued.token}"
            transport = httpx.ASGITransport(app=platform.asgi_app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gw", headers=headers
            ) as client:
                yield client

    return run


POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"


def postgres_admin(statement: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) on the PostgreSQL server, outside any
    transaction."""
    import anyio
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(f"{POSTGRES_SERVER}/postgres")
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    anyio.run(run)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for the test: a SQLite file, or a database of its own on the
    machine's PostgreSQL (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cmms.db'}"
        return
    from tests.helpers import require_service

    require_service(5432, "PostgreSQL")
    name = f"chatterfix_test_{secrets.token_hex(6)}"
    postgres_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
