"""``/openapi.json`` and ``/docs``: the document's content, Swagger UI from local assets (in
a real browser), and a bounded fuzz of the whole gateway from its own document."""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute

import chatterfix
from chatterfix import Platform, hookimpl
from tests.helpers import admin_headers, gateway

pytestmark = pytest.mark.anyio

WORK_ORDER = {
    "type": "object",
    "required": ["title"],
    "properties": {"title": {"type": "string"}, "priority": {"type": "integer"}},
}


async def show_order(request: Request) -> JSONResponse:
    """One work order.

    Answers the order with its id.
    """
    return JSONResponse({"id": request.path_params["order_id"]})


@chatterfix.requires("work_order.write")
@chatterfix.openapi(
    summary="Create a work order",
    request_body=WORK_ORDER,
    responses={201: {"description": "Created", "content": {"application/json": {}}}},
)
async def create_order(request: Request) -> JSONResponse:
    return JSONResponse(await request.json(), status_code=201)


@chatterfix.openapi(include=False)
async def hidden(request: Request) -> JSONResponse:
    return JSONResponse({})


@chatterfix.rate_limit("5/minute")
async def report(request: Request) -> JSONResponse:
    return JSONResponse({})


class Assets(HTTPEndpoint):
    async def get(self, request: Request) -> JSONResponse:
        """List assets."""
        return JSONResponse([])

    async def post(self, request: Request) -> JSONResponse:
        return JSONResponse({}, status_code=201)


async def socket(websocket: Any) -> None:  # pragma: no cover - never connected
    await websocket.close()


class Orders:
    PLUGIN_MANIFEST = {"name": "orders", "description": "Work orders"}

    @hookimpl
    def register_routes(self) -> list[Any]:
        return [
            Route("/api/orders/{order_id:int}", show_order),
            Route("/api/orders", create_order, methods=["POST"]),
            Route("/api/orders/hidden", hidden),
            Route("/api/orders/report", report),
            Route("/api/orders/assets", Assets),
            Mount("/api/orders/files", routes=[Route("/{name}", show_order)]),
            WebSocketRoute("/api/orders/live", socket),
        ]


def orders_platform(**config: Any) -> Platform:
    return Platform(config=config, plugins=[Orders()], load_entrypoints=False, builtins=False)


async def test_document_describes_platform_and_plugin_routes(serve: Any) -> None:
    from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

    platform = orders_platform()
    async with serve(platform, admin=False) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    OPENAPI_30_VALIDATOR.validate(document)
    paths = document["paths"]
    assert document["openapi"] == "3.0.3"
    assert [tag["name"] for tag in document["tags"]] == ["orders", "platform"]
    assert document["tags"][0]["description"] == "Work orders"

    show = paths["/api/orders/{order_id}"]["get"]
    assert show["tags"] == ["orders"]
    assert show["summary"] == "One work order."
    assert show["description"] == "Answers the order with its id."
    assert show["parameters"] == [
        {
            "name": "order_id",
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    ]
    assert "404" in show["responses"] and "security" not in show

    create = paths["/api/orders"]["post"]
    assert create["summary"] == "Create a work order"
    assert create["security"] == [{"bearerAuth": []}]
    assert create["x-permission"] == "work_order.write"
    assert "work_order.write" in create["description"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == WORK_ORDER
    assert {"201", "401", "403", "413", "4XX", "5XX"} <= set(create["responses"])
    assert "2XX" not in create["responses"]
    assert create["responses"]["401"] == {"$ref": "#/components/responses/Error"}

    assert paths["/api/orders/report"]["get"]["x-rate-limit"] == "5/minute"
    assert "429" in paths["/api/orders/report"]["get"]["responses"]
    assert set(paths["/api/orders/assets"]) == {"get", "post"}
    assert paths["/api/orders/assets"]["get"]["summary"] == "List assets."
    assert "/api/orders/files/{name}" in paths
    assert "/api/orders/hidden" not in paths
    assert "/api/orders/live" not in paths
    assert all("head" not in item for item in paths.values())

    action = paths["/platform/plugins/{name}/{action}"]["post"]
    assert action["tags"] == ["platform"]
    assert action["x-permission"] == "platform.admin"
    for path in ("/health", "/platform/status", "/openapi.json", "/docs", "/metrics"):
        assert path in paths
    assert "/docs/{asset}" not in paths
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    error = document["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]


async def test_document_is_built_once_per_routing_generation(serve: Any) -> None:
    platform = orders_platform()
    async with serve(platform) as client:
        first = (await client.get("/openapi.json")).json()
        cached = platform.asgi_app.routing.cache["openapi"][0]
        again = (await client.get("/openapi.json")).json()
        assert platform.asgi_app.routing.cache["openapi"][0] is cached
        stopped = await client.post("/platform/plugins/orders/stop")
        assert stopped.status_code == 200
        after = (await client.get("/openapi.json")).json()
    assert first == again
    assert "/api/orders" in first["paths"]
    assert "/api/orders" not in after["paths"]
    assert [tag["name"] for tag in after["tags"]] == ["platform"]


async def test_rate_limit_responses_follow_the_configuration(serve: Any) -> None:
    limited = orders_platform(gateway={"rate_limit": {"requests": 100}})
    async with serve(limited, admin=False) as client:
        document = (await client.get("/openapi.json")).json()
    status = document["paths"]["/platform/status"]["get"]
    assert status["x-rate-limit"] == "100/second"
    assert "429" in status["responses"]
    assert "429" not in document["paths"]["/health"]["get"]["responses"]  # never limited


async def test_docs_page_uses_local_assets_only(serve: Any) -> None:
    platform = orders_platform()
    async with serve(platform, admin=False) as client:
        page = await client.get("/docs")
        assets = {
            url: await client.get(url) for url in re.findall(r'(?:href|src)="([^"]+)"', page.text)
        }
        init = await client.get("/docs/swagger-ui-init.js")
        missing = await client.get("/docs/secrets.txt")
        traversal = await client.get("/docs/..%2Fpyproject.toml")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text and "//" not in page.text
    assert 'data-openapi-url="/openapi.json"' in page.text
    assert set(assets) == {
        "/docs/swagger-ui.css",
        "/docs/favicon-32x32.png",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui-init.js",
    }
    assert all(response.status_code == 200 for response in assets.values())
    assert (
        assets["/docs/swagger-ui-bundle.js"].headers["content-type"].startswith("text/javascript")
    )
    assert len(assets["/docs/swagger-ui-bundle.js"].content) > 500_000
    assert "validatorUrl: null" in init.text
    assert missing.status_code == 404
    assert traversal.status_code == 404


# -- real server: a browser, and a fuzz of the document --------------------------------------

ORDERS_PLUGIN = textwrap.dedent(
    """
    import chatterfix
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    ORDER = {
        "type": "object",
        "required": ["title"],
        "properties": {"title": {"type": "string"}, "priority": {"type": "integer"}},
    }


    async def show(request):
        \"\"\"One work order.\"\"\"
        return JSONResponse({"id": request.path_params["order_id"]})


    @chatterfix.openapi(
        request_body=ORDER,
        responses={201: {"description": "Created", "content": {"application/json": {}}}},
    )
    async def create(request):
        try:
            body = await request.json()
        except ValueError:
            raise chatterfix.APIError(400, "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("title"), str):
            raise chatterfix.APIError(422, "title is required")
        return JSONResponse({"title": body["title"]}, status_code=201)


    @chatterfix.hookimpl
    def register_routes(platform):
        return [
            Route("/api/orders/{order_id:int}", show),
            Route("/api/orders", create, methods=["POST"]),
        ]
    """
)


@pytest.fixture(scope="module")
def real_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("openapi")
    plugin = root / "plugins" / "orders"
    plugin.mkdir(parents=True)
    (plugin / "plugin.json").write_text('{"name": "orders", "version": "1.0.0"}')
    (plugin / "main.py").write_text(ORDERS_PLUGIN)
    env = {"CHATTERFIX_DATA_DIR": str(root / "data")}
    with gateway(sys.executable, "--plugins-dir", str(plugin.parent), cwd=root, env=env) as url:
        yield url, admin_headers(root, env)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# A live stream never ends; revoking tokens would revoke the fuzzer's own.
NOT_FUZZED = r"^/platform/events/stream$|^/platform/tokens/\{token_id\}$"
EXAMPLES_PER_OPERATION = 6


def test_fuzz_the_gateway_from_its_document(real_gateway: tuple[str, dict[str, str]]) -> None:
    """No 5xx and no answer the document does not describe: a handful of generated requests
    per operation (a few hundred in all), as an administrator, so the deepest paths run."""
    url, headers = real_gateway
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json").exclude(path_regex=NOT_FUZZED)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=5000,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=10)

        try:
            fuzz()
        except Exception as exc:
            raise AssertionError(f"{operation.label}: {exc}") from exc
    assert len(operations) <= calls <= EXAMPLES_PER_OPERATION * len(operations)


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    return path


def test_docs_render_in_a_browser_from_the_gateway_alone(
    real_gateway: tuple[str, dict[str, str]],
) -> None:
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    url, _ = real_gateway
    requested: list[str] = []
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            page.goto(f"{url}/docs")
            page.wait_for_selector(".opblock", timeout=30_000)
            shown = page.locator(".opblock-summary-path").all_inner_texts()
            title = page.locator(".title").first.inner_text()
        finally:
            browser.close()
    assert requested and all(address.startswith(url) for address in requested), requested
    assert f"{url}/openapi.json" in requested
    assert problems == []
    assert "ChatterFix" in title
    normalized = [text.replace("\u200b", "") for text in shown]
    for path in ("/api/orders/{order_id}", "/api/orders", "/health", "/platform/status"):
        assert path in normalized


def test_real_server_openapi_lists_the_folder_plugin(
    real_gateway: tuple[str, dict[str, str]],
) -> None:
    url, _ = real_gateway
    document = httpx.get(f"{url}/openapi.json").json()
    assert document["paths"]["/api/orders"]["post"]["tags"] == ["orders"]
    assert "/api/hello" in document["paths"]  # the built-in plugin
