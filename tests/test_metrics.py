"""``GET /metrics``: requests by route template, latency histograms, plugin states, event
counts, upstream instances; one registry per platform."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chatterfix import Platform, ServiceNotAvailable, hookimpl
from tests.helpers import gateway

pytestmark = pytest.mark.anyio


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"]})


class Stock:
    PLUGIN_MANIFEST = {"name": "stock"}

    @hookimpl
    def register_routes(self) -> list[Any]:
        return [Route("/api/stock/items/{item_id:int}", item)]


class Idle:
    PLUGIN_MANIFEST = {"name": "idle"}


def platform_with(*plugins: object, **config: Any) -> Platform:
    return Platform(config=config, plugins=plugins, load_entrypoints=False, builtins=False)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``(sample name, labels) -> value`` from a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def test_requests_are_counted_by_route_template(serve: Any) -> None:
    platform = platform_with(Stock())
    async with serve(platform, admin=False) as client:
        for number in (1, 2, 3):
            assert (await client.get(f"/api/stock/items/{number}")).status_code == 200
        assert (await client.get("/api/stock/nothing-here")).status_code == 404
        assert (await client.post("/api/stock/items/1")).status_code == 405
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    route = "/api/stock/items/{item_id:int}"
    ok = {"route": route, "method": "GET"}
    assert value(found, "chatterfix_http_requests_total", **ok, status="200") == 3
    assert value(found, "chatterfix_http_requests_total", **ok, status="405") is None
    assert value(found, "chatterfix_http_requests_total", route=route, method="POST", status="405")
    unmatched = {"route": "<unmatched>", "method": "GET", "status": "404"}
    assert value(found, "chatterfix_http_requests_total", **unmatched) == 1
    assert value(found, "chatterfix_http_request_duration_seconds_count", **ok) == 3
    assert value(found, "chatterfix_http_request_duration_seconds_bucket", **ok, le="+Inf") == 3
    assert value(found, "chatterfix_http_request_duration_seconds_bucket", **ok, le="10.0") == 3
    assert (value(found, "chatterfix_http_request_duration_seconds_sum", **ok) or 0) > 0
    # No label holds a concrete path: one series per route, not per item.
    assert "/api/stock/items/1" not in response.text
    assert value(found, "chatterfix_http_requests_in_flight") == 1  # the scrape itself
    assert value(found, "chatterfix_platform_info", version=platform.version) == 1
    assert any(name == "process_cpu_seconds_total" for name, _ in found)


async def test_requests_refused_before_routing_count_for_their_route(serve: Any) -> None:
    platform = platform_with(Stock(), gateway={"rate_limit": {"requests": 1, "period": 3600}})
    async with serve(platform, admin=False) as client:
        statuses = [(await client.get("/api/stock/items/1")).status_code for _ in range(3)]
        found = samples((await client.get("/metrics")).text)
    assert statuses == [200, 429, 429]
    route = {"route": "/api/stock/items/{item_id:int}", "method": "GET"}
    assert value(found, "chatterfix_http_requests_total", **route, status="429") == 2


class Forwarding:
    """Middleware answering /api/vision/... itself, marking the request with a pseudo-route
    as the gateway's reverse proxy does."""

    PLUGIN_MANIFEST = {"name": "forwarding"}

    @hookimpl
    def register_middleware(self) -> list[Any]:
        from starlette.types import ASGIApp, Receive, Scope, Send

        from chatterfix.gateway.proxy import ServiceRoute

        class Forward:
            def __init__(self, app: ASGIApp) -> None:
                self.app = app

            async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] == "http" and scope["path"].startswith("/api/vision/"):
                    scope["route"] = ServiceRoute("vision", "/api/vision/{path:path}")
                    await JSONResponse({"forwarded": True})(scope, receive, send)
                    return
                await self.app(scope, receive, send)

        return [Forward]


async def test_proxied_requests_count_for_their_service_route(serve: Any) -> None:
    platform = platform_with(Forwarding())
    async with serve(platform, admin=False) as client:
        for path in ("/api/vision/a", "/api/vision/b/c"):
            assert (await client.get(path)).json() == {"forwarded": True}
        found = samples((await client.get("/metrics")).text)
    route = {"route": "/api/vision/{path:path}", "method": "GET", "status": "200"}
    assert value(found, "chatterfix_http_requests_total", **route) == 2


async def test_plugin_states_and_event_counts(serve: Any) -> None:
    platform = platform_with(Stock(), Idle())
    async with serve(platform) as client:
        await client.post("/platform/plugins/idle/stop")
        for _ in range(2):
            await platform.events.emit("cmms.work_order.created", {"id": 1})
        await platform.events.emit("cmms.asset.maintenance_due", {"asset": 7})
        found = samples((await client.get("/metrics")).text)
    state = "chatterfix_plugin_state"
    assert value(found, state, plugin="stock", state="running") == 1
    assert value(found, state, plugin="stock", state="stopped") == 0
    assert value(found, state, plugin="idle", state="stopped") == 1
    assert value(found, state, plugin="idle", state="running") == 0
    events = "chatterfix_events_total"
    assert value(found, events, type="cmms.work_order.created") == 2
    assert value(found, events, type="cmms.asset.maintenance_due") == 1
    assert (value(found, events, type="system.plugin.stopped") or 0) >= 1


async def test_event_types_past_the_cap_count_as_other(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chatterfix.events.bus as bus

    monkeypatch.setattr(bus, "COUNTED_TYPES", 2)
    platform = platform_with()
    for number in range(5):
        await platform.events.emit(f"custom.kind_{number}")
    assert platform.events.type_counts == {"custom.kind_0": 1, "custom.kind_1": 1, "other": 3}


class FakeDiscovery:
    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "service": "vision",
                "url": "http://127.0.0.1:9100",
                "healthy": True,
                "requests": 120,
                "errors": 3,
                "p50_ms": 4.0,
                "p95_ms": 18.5,
                "in_flight": 2,
            },
            {
                "service": "vision",
                "url": "http://127.0.0.1:9101",
                "healthy": False,
                "requests": 7,
                "errors": 7,
                "p50_ms": None,
                "p95_ms": None,
                "in_flight": 0,
            },
        ]


async def test_upstream_instances_from_service_discovery(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = platform_with()
    async with serve(platform, admin=False) as client:
        monkeypatch.setattr(Platform, "discovery", property(lambda self: FakeDiscovery()))
        found = samples((await client.get("/metrics")).text)
        monkeypatch.undo()
    first = {"service": "vision", "url": "http://127.0.0.1:9100"}
    second = {"service": "vision", "url": "http://127.0.0.1:9101"}
    assert value(found, "chatterfix_upstream_healthy", **first) == 1
    assert value(found, "chatterfix_upstream_healthy", **second) == 0
    assert value(found, "chatterfix_upstream_requests_total", **first) == 120
    assert value(found, "chatterfix_upstream_errors_total", **second) == 7
    assert value(found, "chatterfix_upstream_in_flight", **first) == 2
    assert value(found, "chatterfix_upstream_latency_seconds", **first, quantile="0.95") == 0.0185
    assert value(found, "chatterfix_upstream_latency_seconds", **second, quantile="0.5") is None


async def test_no_upstreams_without_service_discovery(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(self: Platform) -> Any:
        raise ServiceNotAvailable("service discovery is not available")

    platform = platform_with()
    async with serve(platform, admin=False) as client:
        monkeypatch.setattr(Platform, "discovery", property(unavailable))
        response = await client.get("/metrics")
        monkeypatch.undo()
    assert response.status_code == 200
    assert "chatterfix_upstream_healthy{" not in response.text
    assert "# TYPE chatterfix_upstream_healthy gauge" in response.text


async def test_each_platform_has_its_own_registry(serve: Any) -> None:
    first, second = platform_with(Stock()), platform_with(Stock())
    async with serve(first, admin=False) as client:
        for _ in range(3):
            await client.get("/api/stock/items/1")
    async with serve(second, admin=False) as client:
        await client.get("/api/stock/items/1")
        text = (await client.get("/metrics")).text
    route = {"route": "/api/stock/items/{item_id:int}", "method": "GET", "status": "200"}
    assert value(samples(text), "chatterfix_http_requests_total", **route) == 1
    assert first.metrics.registry is not second.metrics.registry
    assert prometheus_client.REGISTRY.get_sample_value("chatterfix_http_requests_total") is None
    # Plugins may add their own metrics to the platform's registry.
    counter = prometheus_client.Counter(
        "stock_recounts", "Stock recounts", registry=second.metrics.registry
    )
    counter.inc(4)
    body, _ = second.metrics.exposition(None)
    assert "stock_recounts_total 4.0" in body.decode()


async def test_openmetrics_when_asked_for(serve: Any) -> None:
    platform = platform_with()
    async with serve(platform, admin=False) as client:
        response = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


async def test_request_counting_can_be_turned_off(serve: Any) -> None:
    platform = platform_with(Stock(), gateway={"metrics": False})
    async with serve(platform, admin=False) as client:
        await client.get("/api/stock/items/1")
        text = (await client.get("/metrics")).text
    assert platform.asgi_app.routing.metrics is None
    assert "chatterfix_http_requests_total{" not in text
    assert "chatterfix_plugin_state{" in text


def test_metrics_of_a_real_server(tmp_path: Path) -> None:
    with gateway(sys.executable, cwd=tmp_path) as url:
        for _ in range(4):
            httpx.get(f"{url}/api/hello/ana")
        text = httpx.get(f"{url}/metrics").text
    found = samples(text)
    hello = {"route": "/api/hello/{name}", "method": "GET", "status": "200"}
    assert value(found, "chatterfix_http_requests_total", **hello) == 4
    assert value(found, "chatterfix_plugin_state", plugin="hello", state="running") == 1
    assert re.search(r"^process_resident_memory_bytes \d", text, re.M)
