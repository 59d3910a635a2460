"""pytest plugin for plugin authors (registered through the ``pytest11`` entry point).

Fixtures, all async (run them under ``@pytest.mark.anyio``):

- ``chatterfix_plugins`` — override to list the plugin objects under test (default: none).
- ``chatterfix_config`` — override to pass configuration (default: data in ``tmp_path``).
- ``chatterfix_platform`` — a started :class:`~chatterfix.Platform` with just those plugins.
- ``chatterfix_client`` — an ``httpx.AsyncClient`` bound to that platform's gateway.

Nothing heavy is imported until a fixture is used, so installing ChatterFix costs other
test suites nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
