"""The gateway's edges: JSON errors, request ids, health probes, route listing."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from chatterfix import APIError, Platform, hookimpl

pytestmark = pytest.mark.anyio


class Faulty:
    PLUGIN_MANIFEST = {"name": "faulty"}

    @hookimpl
    def register_routes(self) -> list[Any]:
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def crash(request: Request) -> JSONResponse:
            secret = "db-password-123"
            raise RuntimeError(f"connection failed using {secret}")

        async def teapot(request: Request) -> JSONResponse:
            raise HTTPException(418, "short and stout")

        async def conflict(request: Request) -> JSONResponse:
            raise APIError(409, "work order 7 is already closed", "already_closed", id=7)

        async def only_post(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        return [
            Route("/api/faulty/crash", crash),
            Route("/api/faulty/teapot", teapot),
            Route("/api/faulty/conflict", conflict),
            Route("/api/faulty/only-post", only_post, methods=["POST"]),
        ]


@pytest.fixture
def platform() -> Platform:
    return Platform(plugins=[Faulty()], load_entrypoints=False, builtins=False)


def assert_json_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    return error


async def test_unhandled_exception_is_a_json_500_without_traceback(
    platform: Platform, serve: Any
) -> None:
    async with serve(platform) as client:
        response = await client.get("/api/faulty/crash")
        still_up = await client.get("/health")
    error = assert_json_error(response, 500, "internal_error")
    assert error["message"] == "internal server error"
    assert "Traceback" not in response.text
    assert "db-password" not in response.text
    assert still_up.status_code == 200


async def test_http_errors_are_json(platform: Platform, serve: Any) -> None:
    async with serve(platform) as client:
        teapot = await client.get("/api/faulty/teapot")
        conflict = await client.get("/api/faulty/conflict")
        wrong_method = await client.get("/api/faulty/only-post")
        missing = await client.get("/nowhere")
        unknown_plugin = await client.get("/platform/plugins/ghost")
        unknown_action = await client.post("/platform/plugins/faulty/explode")
    assert assert_json_error(teapot, 418, "i_m_a_teapot")["message"] == "short and stout"
    assert assert_json_error(conflict, 409, "already_closed") == {
        "code": "already_closed",
        "message": "work order 7 is already closed",
        "request_id": conflict.headers["x-request-id"],
        "id": 7,
    }
    assert_json_error(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"
    assert assert_json_error(missing, 404, "not_found")["message"] == "no route for GET /nowhere"
    assert assert_json_error(unknown_plugin, 404, "plugin_not_found")["message"] == (
        "no plugin named 'ghost'"
    )
    assert "start, stop, reload" in assert_json_error(unknown_action, 404, "not_found")["message"]


async def test_request_id_is_kept_when_sane_and_made_otherwise(
    platform: Platform, serve: Any
) -> None:
    async with serve(platform) as client:
        kept = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
        replaced = await client.get("/health/live", headers={"X-Request-ID": "bad id; <script>"})
        made = await client.get("/health/live")
    assert kept.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{24}", replaced.headers["x-request-id"])
    assert made.headers["x-request-id"] != replaced.headers["x-request-id"]


async def test_probes_follow_the_lifespan(platform: Platform) -> None:
    transport = httpx.ASGITransport(app=platform.asgi_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        before = await client.get("/health/ready")
        live = await client.get("/health/live")
        async with platform:
            ready = await client.get("/health/ready")
    assert_json_error(before, 503, "not_ready")
    assert live.json() == {"status": "alive"}
    assert ready.json() == {"status": "ready", "plugins_running": 1}


async def test_health_keeps_the_seed_shape(platform: Platform, serve: Any) -> None:
    async with serve(platform) as client:
        health = (await client.get("/health")).json()
    assert health["status"] == "healthy"
    assert health["gateway"] == "ChatterFix Platform Gateway"
    assert health["version"] == platform.version
    assert health["timestamp"].endswith("Z")


async def test_routes_listing_covers_platform_and_plugins(platform: Platform, serve: Any) -> None:
    async with serve(platform) as client:
        routes = (await client.get("/platform/routes")).json()["routes"]
        plugin = (await client.get("/platform/plugins/faulty")).json()
    owners = {route["path"]: route["plugin"] for route in routes}
    assert owners["/platform/status"] == "platform"
    assert owners["/api/faulty/crash"] == "faulty"
    only_post = next(r for r in routes if r["path"] == "/api/faulty/only-post")
    assert only_post["methods"] == ["POST"]
    assert plugin["routes"] == [
        "/api/faulty/crash",
        "/api/faulty/teapot",
        "/api/faulty/conflict",
        "/api/faulty/only-post",
    ]


async def test_platforms_run_side_by_side(serve: Any) -> None:
    class Named:
        def __init__(self, name: str) -> None:
            self.PLUGIN_MANIFEST = {"name": name}

    first = Platform(plugins=[Named("first")], load_entrypoints=False, builtins=False)
    second = Platform(plugins=[Named("second")], load_entrypoints=False, builtins=False)
    async with serve(first) as one, serve(second) as two:
        names_one = [p["name"] for p in (await one.get("/platform/plugins")).json()["plugins"]]
        names_two = [p["name"] for p in (await two.get("/platform/plugins")).json()["plugins"]]
    assert names_one == ["first"]
    assert names_two == ["second"]
