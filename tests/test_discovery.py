"""Service discovery: registration from Python and REST, time-to-live, health checks, passive
ejection, load balancing, figures, events, remote apps' manifests, and the registry shared
by two platforms through Redis."""

from __future__ import annotations

import collections
import secrets
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from chatterfix import Platform, ServiceEndpoint, SystemEvents, hookimpl, service_discovery
from chatterfix.config import ConfigError
from chatterfix.services.discovery import RegistrationError
from tests.helpers import require_service
from tests.proxy_support import Upstream, eventually, fast_discovery, served, upstreams

pytestmark = pytest.mark.anyio

NOWHERE = "http://127.0.0.1:9"  # discard port: nothing answers


def new_platform(plugins: list[object] | None = None, **discovery: Any) -> Platform:
    return Platform(
        config=fast_discovery(**discovery),
        plugins=plugins or [],
        load_entrypoints=False,
        builtins=False,
    )


def events_of(platform: Platform) -> list[Any]:
    seen: list[Any] = []
    platform.events.subscribe("system.service.*", seen.append)
    return seen


# -- registration from Python -----------------------------------------------------------------


async def test_register_from_python_the_seed_way() -> None:
    platform = new_platform(health_interval=60)
    seen = events_of(platform)
    async with platform:
        await service_discovery.register_service(
            ServiceEndpoint(name="my_service", url="http://localhost", port=8100)
        )
        assert await service_discovery.get_service_url("my_service") == "http://localhost:8100"
        assert await platform.discovery.get_service_url("other") is None
        # Registering the same instance again is a renewal, not a second instance.
        await platform.discovery.register_service(
            ServiceEndpoint(name="my_service", url="http://localhost:8100/")
        )
        assert [i["url"] for i in platform.discovery.services()["my_service"]["instances"]] == [
            "http://localhost:8100"
        ]
        assert await platform.discovery.deregister_service("my_service")
        assert platform.discovery.services() == {}
    assert [e.type for e in seen] == [
        SystemEvents.SERVICE_REGISTERED,
        SystemEvents.SERVICE_UNREGISTERED,
    ]
    assert seen[0].data == {"service": "my_service", "url": "http://localhost:8100"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "9lives", "url": "http://x"}, "name"),
        ({"name": "ok", "url": "ftp://x"}, "url"),
        ({"name": "ok", "url": "http://x", "weight": 0}, "weight"),
        ({"name": "ok", "url": "http://x", "ttl": -1}, "ttl"),
        ({"name": "ok", "url": "http://x", "health_endpoint": "health"}, "health_endpoint"),
        ({"name": "ok", "url": "http://x", "port": 70000}, "port"),
    ],
)
async def test_invalid_registrations_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    platform = new_platform()
    with pytest.raises(RegistrationError) as raised:
        await platform.discovery.register(kwargs.pop("name"), kwargs.pop("url"), **kwargs)
    assert raised.value.field == field


def test_an_unknown_balancing_strategy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"discovery\.balancing"):
        Platform(config={"discovery": {"balancing": "random"}}, builtins=False)


# -- load balancing ---------------------------------------------------------------------------


async def test_round_robin_weighted_and_least_connections() -> None:
    platform = new_platform(health_interval=60)
    discovery = platform.discovery
    for index, weight in enumerate((3, 1), start=1):
        await discovery.register("rr", f"http://10.0.0.{index}", weight=weight)
        await discovery.register("w", f"http://10.0.0.{index}", weight=weight)
        await discovery.register("lc", f"http://10.0.0.{index}")
    discovery.set_balancing("w", "weighted")
    discovery.set_balancing("lc", "least_connections")

    picks = [discovery.choose("rr").url for _ in range(4)]  # type: ignore[union-attr]
    assert picks == ["http://10.0.0.1", "http://10.0.0.2"] * 2

    weighted = [discovery.choose("w").url for _ in range(8)]  # type: ignore[union-attr]
    assert collections.Counter(weighted) == {"http://10.0.0.1": 6, "http://10.0.0.2": 2}
    assert weighted[:4] != ["http://10.0.0.1"] * 3 + ["http://10.0.0.2"]  # spread out

    first, second = discovery.service("lc").instances.values()  # type: ignore[union-attr]
    first.in_flight = 5
    assert {discovery.choose("lc").url for _ in range(4)} == {second.url}  # type: ignore[union-attr]
    second.in_flight = 9
    assert discovery.choose("lc") is first
    # An instance to avoid (a retry): the other one, whatever the strategy says.
    assert discovery.choose("lc", exclude=first) is second
    discovery.eject(second, "test")
    assert discovery.choose("lc", exclude=first) is None


async def test_balancing_by_service_from_config() -> None:
    platform = Platform(
        config={"discovery": {"balancing_by_service": {"api": "least_connections"}}},
        builtins=False,
        load_entrypoints=False,
    )
    await platform.discovery.register("api", "http://10.0.0.1")
    await platform.discovery.register("web", "http://10.0.0.1")
    services = platform.discovery.services()
    assert services["api"]["balancing"] == "least_connections"
    assert services["web"]["balancing"] == "round_robin"


# -- REST ----------------------------------------------------------------------------------


async def test_rest_registration_needs_the_admin_permission(serve: Any) -> None:
    platform = new_platform(health_interval=60)
    body = {"name": "svc", "url": "http://127.0.0.1:9100"}
    async with serve(platform, admin=False) as anonymous:
        response = await anonymous.post("/platform/services", json=body)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "authentication_required"
        response = await anonymous.delete("/platform/services/svc")
        assert response.status_code == 401
        assert (await anonymous.get("/platform/services")).json()["services"] == {}


async def test_rest_register_renew_heartbeat_list_deregister(serve: Any) -> None:
    platform = new_platform(health_interval=60)
    body = {
        "name": "vision",
        "url": "http://127.0.0.1",
        "port": 9100,
        "health_endpoint": "/healthz",
        "ttl": 30,
        "metadata": {"version": "1.2.0"},
        "weight": 2,
        "strip_prefix": True,
    }
    async with serve(platform) as client:
        response = await client.post("/platform/services", json=body)
        assert response.status_code == 201
        instance = response.json()["instance"]
        assert instance["url"] == "http://127.0.0.1:9100"
        assert instance["source"] == "api"
        assert 29 < instance["expires_in"] <= 30
        response = await client.post("/platform/services", json=body)  # a renewal
        assert response.status_code == 200
        assert response.json()["created"] is False

        listed = (await client.get("/platform/services")).json()
        assert listed["backend"] == "memory"
        vision = listed["services"]["vision"]
        assert vision["healthy_instances"] == 1
        assert vision["instances"][0]["metadata"] == {"version": "1.2.0"}
        assert vision["instances"][0]["strip_prefix"] is True
        assert (await client.get("/platform/services/vision")).json()["name"] == "vision"

        response = await client.post(
            "/platform/services/vision/heartbeat", json={"url": "http://127.0.0.1:9100"}
        )
        assert response.status_code == 200
        response = await client.post(
            "/platform/services/vision/heartbeat", params={"url": "http://127.0.0.1:9999"}
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "service_not_registered"

        response = await client.delete(
            "/platform/services/vision", params={"url": "http://127.0.0.1:9100"}
        )
        assert response.json() == {"deregistered": ["http://127.0.0.1:9100"], "service": "vision"}
        response = await client.delete("/platform/services/vision")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "service_not_found"
        response = await client.get("/platform/services/vision")
        assert response.status_code == 404


async def test_rest_errors_are_json_and_name_the_field(serve: Any) -> None:
    platform = new_platform(health_interval=60)
    async with serve(platform) as client:
        for body, field in (
            ({"url": "http://x"}, "name"),
            ({"name": "x", "url": "nope"}, "url"),
            ({"name": "x", "url": "http://x", "ttl": "soon"}, "ttl"),
        ):
            response = await client.post("/platform/services", json=body)
            assert response.status_code == 422
            error = response.json()["error"]
            assert error["code"] == "invalid_registration"
            assert error["field"] == field
            assert error["request_id"] == response.headers["x-request-id"]
        response = await client.post("/platform/services", json={"name": "x", "colour": 1})
        assert response.status_code == 422
        assert "colour" in response.json()["error"]["message"]
        response = await client.post("/platform/services", content=b"{not json")
        assert response.status_code == 422


async def test_registrations_that_are_not_renewed_expire(serve: Any) -> None:
    platform = new_platform(health_interval=60)
    seen = events_of(platform)
    async with serve(platform) as client:
        body = {"name": "blip", "url": NOWHERE, "ttl": 0.3}
        assert (await client.post("/platform/services", json=body)).status_code == 201
        keep = {"name": "steady", "url": NOWHERE}  # no ttl: stays until deregistered
        assert (await client.post("/platform/services", json=keep)).status_code == 201
        await eventually(lambda: "blip" not in platform.discovery.services(), "expiry")
    assert "steady" in platform.discovery.services()
    expired = [e for e in seen if e.type == SystemEvents.SERVICE_UNREGISTERED]
    assert [e.data for e in expired] == [{"service": "blip", "url": NOWHERE, "reason": "expired"}]


async def test_heartbeats_keep_a_registration(serve: Any) -> None:
    platform = new_platform(health_interval=60)
    async with serve(platform) as client:
        body = {"name": "pulse", "url": NOWHERE, "ttl": 0.4}
        await client.post("/platform/services", json=body)
        for _ in range(8):  # 1.6 s: four times the time-to-live
            await anyio.sleep(0.2)
            response = await client.post(
                "/platform/services/pulse/heartbeat", params={"url": NOWHERE}
            )
            assert response.status_code == 200
        assert "pulse" in platform.discovery.services()


# -- health, figures, status ---------------------------------------------------------------------


async def test_health_checks_mark_down_and_recover(tmp_path: Path) -> None:
    platform = new_platform()
    seen = events_of(platform)
    with upstreams(tmp_path, "a") as (a,):
        async with platform:
            await platform.discovery.register("svc", a.url)
            instance = platform.discovery.service("svc").instances[a.url]  # type: ignore[union-attr]
            await eventually(lambda: instance.last_check is not None, "a first check")
            assert instance.healthy
            await anyio.to_thread.run_sync(httpx.post, a.url + "/admin/sick")
            await eventually(lambda: not instance.healthy, "marked unhealthy")
            assert "503" in instance.reason
            assert platform.discovery.choose("svc") is None
            status = await platform.status()
            assert status["services"]["unhealthy_services"] == 1
            assert status["services"]["availability_percentage"] == 0.0
            await anyio.to_thread.run_sync(httpx.post, a.url + "/admin/well")
            await eventually(lambda: instance.healthy, "recovered")
            status = await platform.status()
            assert status["services"]["availability_percentage"] == 100.0
    types = [e.type for e in seen]
    assert types == [
        SystemEvents.SERVICE_REGISTERED,
        SystemEvents.SERVICE_UNHEALTHY,
        SystemEvents.SERVICE_RECOVERED,
    ]


async def test_a_burst_of_5xx_ejects_and_an_active_check_readmits(tmp_path: Path) -> None:
    platform = new_platform(eject_5xx=3, ejection_time=0.5)
    seen = events_of(platform)
    with upstreams(tmp_path, "a") as (a,):
        async with served(platform) as (url, _):
            await platform.discovery.register("svc", a.url)
            async with httpx.AsyncClient(base_url=url) as client:
                for _ in range(3):
                    assert (await client.get("/api/svc/status/500")).status_code == 500
                response = await client.get("/api/svc/echo")
                assert response.status_code == 503  # ejected: its only instance is out
                await eventually(
                    lambda: any(e.type == SystemEvents.SERVICE_RECOVERED for e in seen),
                    "re-admission",
                )
                assert (await client.get("/api/svc/echo")).status_code == 200
    unhealthy = next(e for e in seen if e.type == SystemEvents.SERVICE_UNHEALTHY)
    assert unhealthy.data["reason"] == "ejected: 3 5xx answers in a row"


async def test_stats_shape_for_the_metrics(tmp_path: Path) -> None:
    platform = new_platform()
    with upstreams(tmp_path, "a") as (a,):
        async with served(platform) as (url, _):
            await platform.discovery.register("svc", a.url)
            async with httpx.AsyncClient(base_url=url) as client:
                for _ in range(10):
                    await client.get("/api/svc/echo")
                await client.get("/api/svc/status/502")
            stats = platform.discovery.stats()
    assert len(stats) == 1
    entry = stats[0]
    assert list(entry) == [
        "service",
        "url",
        "healthy",
        "requests",
        "errors",
        "p50_ms",
        "p95_ms",
        "in_flight",
    ]
    assert entry["service"] == "svc"
    assert entry["url"] == a.url
    assert entry["requests"] == 11
    assert entry["errors"] == 1
    assert entry["in_flight"] == 0
    assert 0 < entry["p50_ms"] <= entry["p95_ms"]


# -- remote apps from manifests ----------------------------------------------------------------


async def test_a_remote_apps_manifest_makes_a_service(
    tmp_path: Path, make_folder_plugin: Any
) -> None:
    with upstreams(tmp_path, "r") as (remote,):
        manifest = {"name": "vision", "url": remote.url, "strip_prefix": True}
        folder = make_folder_plugin("vision", code=None, manifest=manifest)
        platform = Platform(
            config=fast_discovery(), plugins_dir=folder, load_entrypoints=False, builtins=False
        )
        seen = events_of(platform)
        async with served(platform) as (url, admin):
            instances = platform.discovery.services()["vision"]["instances"]
            assert [(i["url"], i["source"], i["strip_prefix"]) for i in instances] == [
                (remote.url, "manifest", True)
            ]
            async with httpx.AsyncClient(base_url=url, headers=admin) as client:
                seen_path = (await client.get("/api/vision/echo")).json()["raw_path"]
                assert seen_path == "/echo"
                # Deregistering over REST leaves the manifest's instance: stop the plugin.
                response = await client.delete("/platform/services/vision")
                assert response.status_code == 404
                await client.post("/platform/plugins/vision/stop")
                assert "vision" not in platform.discovery.services()
                response = await client.get("/api/vision/echo")
                assert response.status_code == 503
                assert response.json()["error"]["code"] == "plugin_unavailable"
                await client.post("/platform/plugins/vision/start")
                assert (await client.get("/api/vision/echo")).status_code == 200
    assert [e.type for e in seen].count(SystemEvents.SERVICE_REGISTERED) == 2


async def test_plugin_routes_keep_priority_over_a_service_of_the_same_name(
    tmp_path: Path,
) -> None:
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    class Local:
        PLUGIN_MANIFEST = {"name": "shop"}

        @hookimpl
        def register_routes(self, platform: Platform) -> list[Any]:
            async def local(request: Any) -> PlainTextResponse:
                return PlainTextResponse("in-process")

            return [Route("/api/shop/echo", local)]

    with upstreams(tmp_path, "s") as (remote,):
        platform = new_platform([Local()])
        async with served(platform) as (url, _):
            await platform.discovery.register("shop", remote.url)
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/api/shop/echo")).text == "in-process"
                # What the plugin does not serve goes to the service.
                assert (await client.get("/api/shop/status/201")).status_code == 201


# -- shared registry (Redis) -------------------------------------------------------------------


async def test_two_gateways_share_the_registry_through_redis(tmp_path: Path) -> None:
    require_service(6379, "Redis")
    prefix = f"chatterfix-test:{secrets.token_hex(4)}"
    backend = {"backend": "redis://127.0.0.1:6379/0", "prefix": prefix}
    one, two = new_platform(**backend), new_platform(**backend)
    seen_one, seen_two = events_of(one), events_of(two)
    with upstreams(tmp_path, "a", "b") as (a, b):
        async with (
            served(one) as (url_one, admin),
            served(two) as (url_two, _),
            httpx.AsyncClient(headers=admin) as client,
        ):
            for upstream in (a, b):
                response = await client.post(
                    url_one + "/platform/services", json={"name": "svc", "url": upstream.url}
                )
                assert response.status_code == 201
            listed = await eventually(
                lambda: len(two.discovery.services().get("svc", {}).get("instances", [])) == 2,
                "the second gateway seeing both instances",
            )
            assert listed
            answered = {
                (await client.get(url_two + "/api/svc/echo")).json()["instance"] for _ in range(4)
            }
            assert answered == {"a", "b"}
            b.kill()
            for platform in (one, two):
                instance = platform.discovery.service("svc").instances[b.url]  # type: ignore[union-attr]
                await eventually(lambda i=instance: not i.healthy, "b marked down")
            await anyio.sleep(0.5)  # both have checked it again meanwhile
            response = await client.delete(
                url_two + "/platform/services/svc", params={"url": a.url}
            )
            assert response.status_code == 200
            await eventually(
                lambda: [i["url"] for i in one.discovery.services()["svc"]["instances"]] == [b.url],
                "the first gateway dropping a",
            )
    everything = seen_one + seen_two
    unhealthy = [e for e in everything if e.type == SystemEvents.SERVICE_UNHEALTHY]
    assert [e.data["url"] for e in unhealthy] == [b.url]  # once, by whichever saw it first
    registered = [e for e in everything if e.type == SystemEvents.SERVICE_REGISTERED]
    assert len(registered) == 2
    assert all(e in seen_one for e in registered)  # by the gateway that took them


async def test_an_unreachable_redis_backend_fails_the_start() -> None:
    platform = new_platform(backend="redis://127.0.0.1:1/0")
    with pytest.raises(Exception, match="unreachable"):
        async with platform:
            pass


def test_upstream_helper_port_is_free() -> None:
    assert Upstream("x", Path("/tmp")).port > 0
