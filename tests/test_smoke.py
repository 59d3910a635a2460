"""The built-in platform answers its own endpoints, in-process."""

from __future__ import annotations

import httpx
import pytest

from chatterfix import Platform

pytestmark = pytest.mark.anyio


async def test_builtin_hello_plugin_serves_and_reports_health() -> None:
    platform = Platform(load_entrypoints=False)
    async with platform:
        transport = httpx.ASGITransport(app=platform.asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            hello = await client.get("/api/hello/maria")
            health = await client.get("/health")
    assert hello.json() == {"message": "Hello, maria!", "plugin": "hello"}
    assert health.status_code == 200
    assert health.json()["plugins"]["hello"]["status"] == "healthy"
