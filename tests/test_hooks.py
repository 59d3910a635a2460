"""Every hook, exercised through a real platform (test names: ``test_hook_<hook name>``)."""

from __future__ import annotations

from typing import Any

import click
import pytest
from click.testing import CliRunner

from chatterfix import Event, Platform, SystemEvents, hookimpl, hookspec

pytestmark = pytest.mark.anyio


def platform_of(*plugins: object, **config: Any) -> Platform:
    return Platform(config=config, plugins=plugins, load_entrypoints=False, builtins=False)


class Inventory:
    """A plugin implementing every hook, half of them async."""

    PLUGIN_MANIFEST = {"name": "inventory", "version": "2.0.0", "permissions": ["part.read"]}

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.seen: list[Event] = []

    @hookimpl
    async def register_routes(self, platform: Platform) -> list[Any]:
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def parts(request: Request) -> JSONResponse:
            await platform.events.emit("inventory.listed", {"count": 2}, source="inventory")
            return JSONResponse({"parts": ["bearing", "seal"]})

        return [Route("/api/inventory/parts", parts)]

    @hookimpl
    def register_middleware(self, platform: Platform) -> list[Any]:
        class StampMiddleware:
            def __init__(self, app: Any) -> None:
                self.app = app

            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                async def stamped(message: Any) -> None:
                    if message["type"] == "http.response.start":
                        message["headers"] = [*message["headers"], (b"x-inventory", b"1")]
                    await send(message)

                await self.app(scope, receive, stamped)

        return [StampMiddleware]

    @hookimpl
    def register_event_handlers(self, platform: Platform) -> list[Any]:
        return [("inventory.*", self.seen.append)]

    @hookimpl
    def register_models(self, metadata: Any) -> Any:
        import sqlalchemy as sa

        return sa.Table("inventory_parts", metadata, sa.Column("id", sa.Integer, primary_key=True))

    @hookimpl
    async def register_permissions(self, platform: Platform) -> dict[str, str]:
        return {"part.write": "Change stock levels"}

    @hookimpl
    def register_ai_providers(self, platform: Platform) -> list[Any]:
        class EchoProvider:
            name = "echo"

        return [EchoProvider()]

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        @cli.command("inventory-count")
        def count() -> None:
            click.echo("2 parts")

    @hookimpl
    def config_schema(self) -> dict[str, Any]:
        return {"reorder_point": {"type": "integer", "default": 5}}

    @hookimpl
    async def startup(self, platform: Platform) -> None:
        self.calls.append("startup")

    @hookimpl
    def shutdown(self, platform: Platform) -> None:
        self.calls.append("shutdown")

    @hookimpl
    async def health_check(self, platform: Platform) -> dict[str, Any]:
        return {"status": "healthy", "parts": 2}


async def test_hook_register_routes(serve: Any) -> None:
    async with serve(platform_of(Inventory())) as client:
        response = await client.get("/api/inventory/parts")
        routes = (await client.get("/platform/routes")).json()["routes"]
    assert response.json() == {"parts": ["bearing", "seal"]}
    assert {"path": "/api/inventory/parts", "plugin": "inventory"}.items() <= routes[-1].items()


async def test_hook_register_middleware(serve: Any) -> None:
    async with serve(platform_of(Inventory())) as client:
        response = await client.get("/health")
        stopped = await client.post("/platform/plugins/inventory/stop")
        after = await client.get("/health")
    assert response.headers["x-inventory"] == "1"
    assert stopped.status_code == 200
    assert "x-inventory" not in after.headers


async def test_hook_register_event_handlers(serve: Any) -> None:
    plugin = Inventory()
    platform = platform_of(plugin)
    async with serve(platform) as client:
        response = await client.get("/api/inventory/parts")
        await client.post("/platform/plugins/inventory/stop")
        await platform.events.emit("inventory.listed", {"count": 0})
    [event] = plugin.seen
    assert event.data == {"count": 2}
    assert event.source == "inventory"
    assert event.correlation_id == response.headers["x-request-id"]


async def test_hook_register_models() -> None:
    async with platform_of(Inventory()) as platform:
        assert "inventory_parts" in platform.metadata.tables


async def test_hook_register_permissions() -> None:
    async with platform_of(Inventory()) as platform:
        assert platform.permissions["part.write"].description == "Change stock levels"
        assert platform.permissions["part.read"].plugin == "inventory"
        await platform.plugins.stop_plugin("inventory")
        assert "part.write" not in platform.permissions


async def test_hook_register_ai_providers() -> None:
    async with platform_of(Inventory()) as platform:
        assert platform.ai_providers["echo"].name == "echo"


def test_hook_register_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatterfix.cli import cli
    from chatterfix.cli.plugin_commands import add_plugin_commands

    monkeypatch.setattr(
        "chatterfix.platform.Platform.__init__",
        _init_with(Inventory()),
    )
    group = click.Group(commands=dict(cli.commands))
    add_plugin_commands(group)
    result = CliRunner().invoke(group, ["inventory-count"])
    assert result.output == "2 parts\n"


def _init_with(plugin: object) -> Any:
    original = Platform.__init__

    def init(self: Platform, *args: Any, **kwargs: Any) -> None:
        original(self, plugins=[plugin], load_entrypoints=False, builtins=False)

    return init


async def test_hook_config_schema() -> None:
    async with platform_of(Inventory(), inventory={"reorder_point": 9}) as platform:
        assert platform.config.get("inventory.reorder_point") == 9
        assert platform.config.source("inventory.reorder_point") == "code"
    async with platform_of(Inventory()) as platform:
        assert platform.config.get("inventory.reorder_point") == 5
        assert platform.config.source("inventory.reorder_point") == "schema"


async def test_hook_startup_and_hook_shutdown() -> None:
    plugin = Inventory()
    async with platform_of(plugin) as platform:
        assert plugin.calls == ["startup"]
        await platform.plugins.reload_plugin("inventory")
        assert plugin.calls == ["startup", "startup"]
    assert plugin.calls == ["startup", "startup", "shutdown", "shutdown"]


async def test_hook_health_check(serve: Any) -> None:
    async with serve(platform_of(Inventory())) as client:
        health = (await client.get("/health")).json()
        status = (await client.get("/platform/status")).json()
    assert health["status"] == "healthy"
    assert health["plugins"]["inventory"] == {"status": "healthy", "parts": 2, "state": "running"}
    assert status["plugins"]["inventory"]["health"] == "healthy"
    assert status["plugins"]["inventory"]["last_heartbeat"].endswith("Z")
    assert status["services"] == {
        "total_services": 1,
        "healthy_services": 1,
        "unhealthy_services": 0,
        "availability_percentage": 100.0,
    }


async def test_lifecycle_events_are_emitted() -> None:
    async with platform_of(Inventory()) as platform:
        await platform.plugins.stop_plugin("inventory")
        types = [event.type for event in platform.events.history]
    assert types == [SystemEvents.PLUGIN_STARTED, SystemEvents.PLUGIN_STOPPED]


class ExtraSpecs:
    @hookspec(firstresult=True)
    def pick_technician(self, skill: str) -> Any:
        """A first-result hook added by a plugin."""

    @hookspec
    def collect_tags(self) -> Any:
        """A plain hook added by a plugin."""


async def test_async_relay_awaits_before_choosing_the_first_result() -> None:
    class NoOpinion:
        PLUGIN_MANIFEST = {"name": "no_opinion"}
        HOOKSPECS = ExtraSpecs

        @hookimpl(tryfirst=True)
        async def pick_technician(self, skill: str) -> None:
            return None

        @hookimpl
        async def collect_tags(self) -> list[str]:
            return ["async"]

    class Dispatcher:
        PLUGIN_MANIFEST = {"name": "dispatcher"}

        @hookimpl
        async def pick_technician(self, skill: str) -> str:
            return f"tech-for-{skill}"

        @hookimpl
        def collect_tags(self) -> list[str]:
            return ["sync"]

    platform = platform_of(Dispatcher(), NoOpinion())
    async with platform:
        assert await platform.plugins.ahook.pick_technician(skill="welding") == ("tech-for-welding")
        # pluggy order: the plugin registered last is called first.
        assert await platform.plugins.ahook.collect_tags() == [["async"], ["sync"]]
        with pytest.raises(TypeError, match="must provide argument"):
            await platform.plugins.ahook.pick_technician()


async def test_seed_names_resolve_to_the_running_platform() -> None:
    from chatterfix import config_manager, event_system, plugin_registry, shared_services

    received: list[Event] = []

    def handler(event: Event) -> None:
        received.append(event)

    async with platform_of(Inventory(), platform={"debug": True}) as platform:
        # The seed's integration test, as written.
        event_system.subscribe("test.event", handler)
        await event_system.emit("test.event", {"test": "data"}, source="test")
        assert len(received) == 1
        assert received[0].data["test"] == "data"

        assert plugin_registry.get_plugin_status("inventory")["status"] == "running"
        assert config_manager.get("platform.debug") is True
        assert shared_services.get_logger("my_app").name == "chatterfix.my_app"
        assert shared_services.auth is platform.auth
        assert shared_services.ai is platform.ai
        assert platform.events.history[-1].type == "test.event"


def test_seed_names_without_a_platform_say_so() -> None:
    from chatterfix import event_system

    with pytest.raises(RuntimeError, match="no ChatterFix platform is running"):
        event_system.emit  # noqa: B018
