"""The pytest plugin plugin authors use: its fixtures, here and in a separate test run."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from chatterfix import Platform, hookimpl

pytest_plugins = ["pytester"]


class Counter:
    PLUGIN_MANIFEST = {"name": "counter"}

    @hookimpl
    def register_routes(self, platform: Platform) -> list[Any]:
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def count(request: Any) -> JSONResponse:
            return JSONResponse({"count": platform.config.get("counter.start")})

        return [Route("/api/counter/count", count)]


@pytest.fixture
def chatterfix_plugins() -> list[object]:
    return [Counter()]


@pytest.fixture
def chatterfix_config(chatterfix_config: dict[str, Any]) -> dict[str, Any]:
    return {**chatterfix_config, "counter": {"start": 10}}


@pytest.mark.anyio
async def test_fixtures_give_a_started_platform_and_a_client(
    chatterfix_platform: Platform, chatterfix_client: httpx.AsyncClient
) -> None:
    assert list(chatterfix_platform.plugins.records) == ["counter"]
    response = await chatterfix_client.get("/api/counter/count")
    assert response.json() == {"count": 10}


@pytest.mark.anyio
async def test_tokens_and_an_admin_client_for_permission_checks(
    chatterfix_platform: Platform,
    chatterfix_client: httpx.AsyncClient,
    chatterfix_admin_client: httpx.AsyncClient,
    chatterfix_token: Any,
) -> None:
    reader = await chatterfix_token("counter.read")
    me = await chatterfix_client.get(
        "/platform/auth/me", headers={"Authorization": f"Bearer {reader}"}
    )
    assert me.json()["permissions"] == ["counter.read"]
    assert (await chatterfix_client.post("/platform/plugins/counter/stop")).status_code == 401
    stopped = await chatterfix_admin_client.post("/platform/plugins/counter/stop")
    assert stopped.json()["status"] == "stopped"


def test_plugin_works_in_a_plain_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        my_app="""
        from starlette.responses import JSONResponse
        from starlette.routing import Route
        import chatterfix

        async def status(request):
            return JSONResponse({"ok": True})

        @chatterfix.hookimpl
        def register_routes(platform):
            return [Route("/api/my_app/status", status)]
        """,
        test_my_app="""
        import pytest
        import my_app

        @pytest.fixture
        def chatterfix_plugins():
            return [my_app]

        @pytest.mark.anyio
        async def test_status(chatterfix_client):
            response = await chatterfix_client.get("/api/my_app/status")
            assert response.json() == {"ok": True}
        """,
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
