"""pytest plugin for plugin authors (registered through the ``pytest11`` entry point).

Fixtures, all async (run them under ``@pytest.mark.anyio``):

- ``chatterfix_plugins`` — override to list the plugin objects under test (default: none).
- ``chatterfix_config`` — override to pass configuration (default: data in ``tmp_path``).
- ``chatterfix_platform`` — a started :class:`~chatterfix.Platform` with just those plugins.
- ``chatterfix_client`` — an ``httpx.AsyncClient`` bound to that platform's gateway.
- ``chatterfix_admin_client`` — the same, sending an administrator's API token.
- ``chatterfix_token`` — a factory: ``await chatterfix_token("perm.a", ...)`` issues a token
  for a new user holding just those permissions.

Nothing heavy is imported until a fixture is used, so installing ChatterFix costs other
test suites nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx

    from chatterfix.platform import Platform


@pytest.fixture
def chatterfix_plugins() -> list[object]:
    """The plugins to load; override in your ``conftest.py``: ``return [my_app]``."""
    return []


@pytest.fixture
def chatterfix_config(tmp_path: Path) -> dict[str, Any]:
    """Configuration for the test platform; override or extend in your ``conftest.py``."""
    return {"platform": {"data_dir": str(tmp_path / ".chatterfix")}}


@pytest.fixture
async def chatterfix_platform(
    anyio_backend: str, chatterfix_plugins: list[object], chatterfix_config: dict[str, Any]
) -> AsyncIterator[Platform]:
    """A started platform holding only ``chatterfix_plugins`` (no installed plugins)."""
    from chatterfix.platform import Platform

    platform = Platform(
        config=chatterfix_config,
        plugins=chatterfix_plugins,
        load_entrypoints=False,
        builtins=False,
    )
    async with platform:
        with platform.activated():
            yield platform


@pytest.fixture
async def chatterfix_client(
    anyio_backend: str, chatterfix_platform: Platform
) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` that talks to the platform's gateway in-process."""
    import httpx

    transport = httpx.ASGITransport(app=chatterfix_platform.asgi_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def chatterfix_token(
    anyio_backend: str, chatterfix_platform: Platform
) -> Callable[..., Awaitable[str]]:
    """``await chatterfix_token("work_order.create")``: an API token for a new user holding
    exactly the permissions given (none: a user without permissions)."""

    async def issue(*permissions: str) -> str:
        auth = chatterfix_platform.auth
        name = f"test-{secrets.token_hex(4)}"
        roles = []
        if permissions:
            await auth.create_role(name, permissions)
            roles.append(name)
        user = await auth.create_user(username=name, roles=roles)
        return (await auth.create_token(user.id, "tests")).token

    return issue


@pytest.fixture
async def chatterfix_admin_client(
    anyio_backend: str,
    chatterfix_platform: Platform,
    chatterfix_token: Callable[..., Awaitable[str]],
) -> AsyncIterator[httpx.AsyncClient]:
    """Like ``chatterfix_client``, sending an administrator's token (``platform.admin``)."""
    import httpx

    from chatterfix.permissions import ADMIN_PERMISSION

    token = await chatterfix_token(ADMIN_PERMISSION)
    transport = httpx.ASGITransport(app=chatterfix_platform.asgi_app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client
