"""Hard cases: concurrent lifecycle actions, cancellation, broken plugins, leaks."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from chatterfix import Event, Platform, hookimpl
from chatterfix.config import Config, ConfigError
from chatterfix.plugins import PluginState

pytestmark = pytest.mark.anyio

SLOW_START = """
import anyio
import chatterfix

CALLS = []

@chatterfix.hookimpl
async def startup(platform):
    CALLS.append("startup")
    await anyio.sleep(0.05)

@chatterfix.hookimpl
def shutdown(platform):
    CALLS.append("shutdown")

@chatterfix.hookimpl
def register_event_handlers(platform):
    return [("slow.ping", lambda event: CALLS.append("ping"))]
"""


def folder_platform(folder: Path, **config: Any) -> Platform:
    return Platform(config=config, plugins_dir=folder, load_entrypoints=False, builtins=False)


def module_of(platform: Platform, name: str) -> Any:
    return platform.plugins.get(name).plugin


async def both(client: httpx.AsyncClient, first: str, second: str) -> list[httpx.Response]:
    responses: list[httpx.Response] = []

    async def post(path: str) -> None:
        responses.append(await client.post(path))

    async with anyio.create_task_group() as group:
        group.start_soon(post, first)
        group.start_soon(post, second)
    return responses


async def test_concurrent_starts_run_startup_once(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    folder = make_folder_plugin("slow", SLOW_START, {"name": "slow", "auto_start": False})
    platform = folder_platform(folder)
    async with serve(platform) as client:
        responses = await both(
            client, "/platform/plugins/slow/start", "/platform/plugins/slow/start"
        )
        await platform.events.emit("slow.ping")
        calls = list(module_of(platform, "slow").CALLS)
    assert [r.status_code for r in responses] == [200, 200]
    assert calls == ["startup", "ping"]


async def test_concurrent_reloads_are_serialised(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    folder = make_folder_plugin("slow", SLOW_START)
    platform = folder_platform(folder)
    async with serve(platform) as client:
        responses = await both(
            client, "/platform/plugins/slow/reload", "/platform/plugins/slow/reload"
        )
        await anyio.sleep(0.1)  # let the retired generations shut down
        await platform.events.emit("slow.ping")
        assert [r.status_code for r in responses] == [200, 200]
        assert platform.plugins.get("slow").state is PluginState.RUNNING
        assert len(platform.events.subscriptions()) == 1


async def test_reload_racing_stop_leaves_no_generation_behind(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    folder = make_folder_plugin("slow", SLOW_START)
    platform = folder_platform(folder)
    first = module_of(platform, "slow")
    async with serve(platform) as client:
        await both(client, "/platform/plugins/slow/reload", "/platform/plugins/slow/stop")
        await anyio.sleep(0.1)
        assert platform.events.subscriptions() == []
        states = {platform.plugins.get("slow").state}
    assert first.CALLS.count("shutdown") == 1
    assert states <= {PluginState.STOPPED, PluginState.RUNNING}


class BrokenMiddleware:
    PLUGIN_MANIFEST = {"name": "bad_middleware"}

    @hookimpl
    def register_middleware(self) -> list[Any]:
        class NeedsOption:
            def __init__(self, app: Any, required_option: str) -> None:
                self.app = app

        return [NeedsOption]


class Greeter:
    PLUGIN_MANIFEST = {"name": "greeter"}

    @hookimpl
    def register_routes(self) -> list[Any]:
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        return [Route("/api/greeter/hi", lambda request: PlainTextResponse("hi"))]


async def test_broken_middleware_fails_only_its_plugin(serve: Any) -> None:
    platform = Platform(
        plugins=[BrokenMiddleware(), Greeter()], load_entrypoints=False, builtins=False
    )
    async with serve(platform) as client:
        assert (await client.get("/api/greeter/hi")).text == "hi"
        stop = await client.post("/platform/plugins/greeter/stop")
        start = await client.post("/platform/plugins/greeter/start")
        assert (await client.get("/api/greeter/hi")).text == "hi"
    record = platform.plugins.get("bad_middleware")
    assert record.state is PluginState.ERROR
    assert record.error_message.startswith("register_middleware failed: TypeError")
    assert (stop.status_code, start.status_code) == (200, 200)


async def test_cancelled_start_ends_in_error_without_leaks() -> None:
    class Slow:
        PLUGIN_MANIFEST = {"name": "slow", "auto_start": False}

        @hookimpl
        def register_event_handlers(self) -> list[Any]:
            return [("x.*", print)]

        @hookimpl
        async def startup(self) -> None:
            await anyio.sleep(10)

    async with Platform(plugins=[Slow()], load_entrypoints=False, builtins=False) as platform:
        with anyio.move_on_after(0.05):
            await platform.plugins.start_plugin("slow")
        record = platform.plugins.get("slow")
        assert record.state is PluginState.ERROR
        assert record.error_message.startswith("startup failed: cancelled")
        assert platform.events.subscriptions() == []


async def test_platform_exit_shuts_down_a_generation_still_draining(
    make_folder_plugin: Callable[..., Path],
) -> None:
    code = """
    import anyio
    import chatterfix
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    EVENTS = []

    async def slow(request):
        await anyio.sleep(0.3)
        return PlainTextResponse("done")

    @chatterfix.hookimpl
    def register_routes(platform):
        return [Route("/api/draining/slow", slow)]

    @chatterfix.hookimpl
    def shutdown(platform):
        EVENTS.append("shutdown")
    """
    folder = make_folder_plugin("draining", code)
    platform = folder_platform(folder, plugins={"drain_timeout": 5})
    first = module_of(platform, "draining")
    transport = httpx.ASGITransport(app=platform.asgi_app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://gw") as client,
        platform,
        anyio.create_task_group() as group,
    ):
        group.start_soon(client.get, "/api/draining/slow")
        await anyio.sleep(0.05)
        await platform.plugins.reload_plugin("draining")
    assert first.EVENTS == ["shutdown"]
    assert module_of(platform, "draining").EVENTS == ["shutdown"]


async def test_strict_mode_does_not_break_runtime_reloads(
    make_folder_plugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, serve: Any
) -> None:
    good = "import chatterfix\n\n@chatterfix.hookimpl\ndef startup(platform):\n    pass\n"
    folder = make_folder_plugin("strict", good)
    monkeypatch.setenv("CHATTERFIX_STRICT_PLUGINS", "1")
    async with serve(folder_platform(folder)) as client:
        (folder / "strict" / "main.py").write_text(good.replace("def startup", "def startpu"))
        typo = await client.post("/platform/plugins/strict/reload")
        (folder / "strict" / "main.py").write_text("raise RuntimeError('bad deploy')\n")
        broken = await client.post("/platform/plugins/strict/reload")
        (folder / "strict" / "main.py").write_text(good)
        fixed = await client.post("/platform/plugins/strict/reload")
    assert typo.status_code == 409
    assert "did you mean 'startup'" in typo.json()["error"]["message"]
    assert broken.status_code == 409
    assert fixed.status_code == 200


def routes_plugin(name: str, *paths: str) -> object:
    def register_routes(self: object) -> list[Any]:
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        return [Route(path, lambda request: PlainTextResponse(name)) for path in paths]

    namespace = {"PLUGIN_MANIFEST": {"name": name}, "register_routes": hookimpl(register_routes)}
    return type(name, (), namespace)()


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [
        ("/api/items/{item_id}", "/api/items/{id}"),
        ("/api/items/new", "/api/items/{id}"),
        ("/api/files/{rest:path}", "/api/files/a/b"),
        ("/health/{check}", None),
    ],
)
async def test_overlapping_routes_are_refused(mine: str, theirs: str | None) -> None:
    plugins = [routes_plugin("first", theirs)] if theirs else []
    plugins.append(routes_plugin("second", mine))
    async with Platform(plugins=plugins, load_entrypoints=False, builtins=False) as platform:
        message = platform.plugins.get("second").error_message
    assert "collides with plugin" in message
    assert ("'first'" if theirs else "'platform'") in message


async def test_failed_reload_keeps_the_running_generations_contributions() -> None:
    class Contributor:
        PLUGIN_MANIFEST = {"name": "contrib", "permissions": ["contrib.use"]}
        fail = False

        @hookimpl
        def register_ai_providers(self) -> Any:
            return type("Provider", (), {"name": "contrib_llm"})()

        @hookimpl
        def register_models(self, metadata: Any) -> None:
            import sqlalchemy as sa

            sa.Table("contrib_items", metadata, sa.Column("id", sa.Integer, primary_key=True))

        @hookimpl
        def startup(self) -> None:
            if self.fail:
                raise RuntimeError("bad deploy")

    plugin = Contributor()
    async with Platform(plugins=[plugin], load_entrypoints=False, builtins=False) as platform:
        plugin.fail = True
        with pytest.raises(Exception, match="bad deploy"):
            await platform.plugins.reload_plugin("contrib")
        assert list(platform.permissions) == ["platform.admin", "ai.use", "contrib.use"]
        assert list(platform.ai_providers) == ["contrib_llm"]
        assert list(platform.metadata.tables) == ["contrib_items"]
        assert platform.plugins.get("contrib").state is PluginState.RUNNING


async def test_health_details_that_are_not_json_are_shown_as_text(serve: Any) -> None:
    from datetime import datetime

    class Clock:
        PLUGIN_MANIFEST = {"name": "clock"}

        @hookimpl
        def health_check(self) -> dict[str, Any]:
            return {"status": "healthy", "checked_at": datetime(2026, 1, 2, 3, 4)}

    async with serve(Platform(plugins=[Clock()], load_entrypoints=False, builtins=False)) as c:
        health = await c.get("/health")
    assert health.json()["plugins"]["clock"]["checked_at"] == "2026-01-02 03:04:00"


async def test_blocking_sync_health_check_is_cut_off(serve: Any) -> None:
    class Blocking:
        PLUGIN_MANIFEST = {"name": "blocking"}

        @hookimpl
        def health_check(self) -> dict[str, str]:
            time.sleep(1)
            return {"status": "healthy"}

    platform = Platform(
        config={"plugins": {"health_timeout": 0.1}},
        plugins=[Blocking()],
        load_entrypoints=False,
        builtins=False,
    )
    async with serve(platform) as client:
        health = (await client.get("/health")).json()
    assert health["plugins"]["blocking"]["error"] == "health check timed out (0.1s)"
    assert platform.plugins.get("blocking").error_message.startswith("health_check failed")


def test_bad_numbers_in_config_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATTERFIX_PLUGINS__HEALTH_TIMEOUT", "5s")
    expected = r"plugins\.health_timeout = '5s' from environment variable CHATTERFIX_PLUGINS__"
    with pytest.raises(ConfigError, match=expected):
        Platform(load_entrypoints=False, builtins=False)


async def test_tracebacks_reach_clients_only_in_debug(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    folder = make_folder_plugin("broken", "raise RuntimeError('at import')\n")
    for debug in (False, True):
        async with serve(folder_platform(folder, platform={"debug": debug})) as client:
            body = (await client.get("/platform/status")).text
            plugins = (await client.get("/platform/plugins")).text
        assert ("Traceback" in body) is debug
        assert ("Traceback" in plugins) is debug


def test_odd_plugins_become_load_errors(
    make_folder_plugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder_plugin("exits", "import sys\nsys.exit(2)\n")
    make_folder_plugin("fine", "")

    class ListManifest:
        PLUGIN_MANIFEST = ["not", "a", "dict"]

    monkeypatch.setenv("CHATTERFIX_DISABLE_PLUGINS", "fine")
    platform = Platform(
        plugins=[ListManifest()], plugins_dir=folder, load_entrypoints=False, builtins=False
    )
    messages = [error.message for error in platform.plugins.load_errors]
    assert messages[0] == "import failed: SystemExit: 2"
    assert "PLUGIN_MANIFEST" in messages[1]
    assert platform.plugins.get("fine").state is PluginState.DISABLED


def test_folder_plugins_cannot_shadow_the_standard_library(
    make_folder_plugin: Callable[..., Path],
) -> None:
    import calendar

    folder = make_folder_plugin("calendar", None)
    package = folder / "calendar" / "calendar"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import chatterfix\nfrom .secrets import TOKEN\n\n"
        "@chatterfix.hookimpl\ndef startup(platform):\n    pass\n"
    )
    (package / "secrets.py").write_text("TOKEN = 'not random'\n")
    path_before = list(sys.path)
    platform = folder_platform(folder)
    record = platform.plugins.get("calendar")
    assert record.hooks == ["startup"]
    assert record.plugin.TOKEN == "not random"
    assert sys.modules["calendar"] is calendar
    assert sys.path == path_before


async def test_reload_keeps_a_stopped_plugin_stopped_and_retries_an_errored_one(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    failing = "import chatterfix\n\n@chatterfix.hookimpl\ndef startup(platform):\n    1 / 0\n"
    folder = make_folder_plugin("stopper", "")
    make_folder_plugin("failer", failing)
    async with serve(folder_platform(folder)) as client:
        await client.post("/platform/plugins/stopper/stop")
        stopped = await client.post("/platform/plugins/stopper/reload")
        (folder / "failer" / "main.py").write_text(failing.replace("1 / 0", "pass"))
        retried = await client.post("/platform/plugins/failer/reload")
    assert stopped.json()["status"] == "stopped"
    assert retried.json()["status"] == "running"


async def test_module_level_subscriptions_follow_the_plugin(
    make_folder_plugin: Callable[..., Path],
) -> None:
    code = """
    from chatterfix import event_system

    SEEN = []

    @event_system.subscribe("cmms.work_order.created")
    def on_created(event):
        SEEN.append(event.data["work_order_id"])
    """
    folder = make_folder_plugin("listener", code)
    async with folder_platform(folder) as platform:
        await platform.events.emit("cmms.work_order.created", {"work_order_id": 1})
        first = module_of(platform, "listener")
        await platform.plugins.reload_plugin("listener")
        await platform.events.emit("cmms.work_order.created", {"work_order_id": 2})
        await platform.plugins.stop_plugin("listener")
        await platform.events.emit("cmms.work_order.created", {"work_order_id": 3})
        await platform.plugins.start_plugin("listener")
        await platform.events.emit("cmms.work_order.created", {"work_order_id": 4})
        second = module_of(platform, "listener")
    assert first.SEEN == [1]
    assert second.SEEN == [2, 4]


async def test_stopping_a_dependency_stops_dependents_in_reverse_order() -> None:
    log: list[str] = []

    def plugin(name: str, needs: list[str]) -> object:
        def shutdown(self: object) -> None:
            log.append(name)

        manifest = {"name": name, "dependencies": needs}
        return type(name, (), {"PLUGIN_MANIFEST": manifest, "shutdown": hookimpl(shutdown)})()

    plugins = [plugin("assets", []), plugin("work_orders", ["assets"])]
    plugins.append(plugin("reports", ["work_orders"]))
    async with Platform(plugins=plugins, load_entrypoints=False, builtins=False) as platform:
        stopped = await platform.plugins.stop_plugin("assets")
    assert stopped == ["reports", "work_orders", "assets"]
    assert log == ["reports", "work_orders", "assets"]


def test_environment_aliases_win_over_nested_names() -> None:
    for environ in (
        {"CHATTERFIX_DISABLE_PLUGINS": "a", "CHATTERFIX_PLUGINS__DISABLED": '["b"]'},
        {"CHATTERFIX_PLUGINS__DISABLED": '["b"]', "CHATTERFIX_DISABLE_PLUGINS": "a"},
    ):
        assert Config(environ=environ).get("plugins.disabled") == ["a"]


async def test_a_remote_app_that_cannot_be_reached_answers_503(serve: Any) -> None:
    class Remote:
        PLUGIN_MANIFEST = {"name": "remote_app", "url": "http://127.0.0.1:9"}  # nothing there

    platform = Platform(plugins=[], load_entrypoints=False, builtins=False)
    async with serve(platform) as client:
        await platform.plugins.register_plugin(Remote.PLUGIN_MANIFEST)
        response = await client.get("/api/remote_app/anything")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "'remote_app'" in error["message"]
    assert "http://127.0.0.1:9" in error["message"]


async def test_event_from_a_request_carries_its_request_id(serve: Any) -> None:
    seen: list[Event] = []

    class Emitter:
        PLUGIN_MANIFEST = {"name": "emitter"}

        @hookimpl
        def register_routes(self, platform: Platform) -> list[Any]:
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route

            async def emit(request: Any) -> PlainTextResponse:
                await platform.events.emit("emitter.done", {})
                return PlainTextResponse("ok")

            return [Route("/api/emitter/emit", emit)]

    platform = Platform(plugins=[Emitter()], load_entrypoints=False, builtins=False)
    platform.events.subscribe("emitter.*", seen.append)
    async with serve(platform) as client:
        await client.get("/api/emitter/emit", headers={"X-Request-ID": "req-42"})
    assert seen[0].correlation_id == "req-42"


async def test_lifecycle_requests_do_not_wait_for_each_other_to_drain(serve: Any) -> None:
    platform = Platform(
        config={"plugins": {"drain_timeout": 60}},
        plugins=[routes_plugin("one", "/api/one/x"), routes_plugin("two", "/api/two/x")],
        load_entrypoints=False,
        builtins=False,
    )
    async with serve(platform) as client:
        with anyio.fail_after(20):  # a drain waiting on its peer would take the full minute
            responses = await both(
                client, "/platform/plugins/one/stop", "/platform/plugins/two/stop"
            )
    assert sorted(r.json()["plugin"] for r in responses) == ["one", "two"]


def test_a_failed_import_leaves_no_subscription(make_folder_plugin: Callable[..., Path]) -> None:
    code = """
    from chatterfix import event_system

    @event_system.subscribe("*")
    def everything(event):
        raise AssertionError("a plugin that failed to import must not hear events")

    raise RuntimeError("half-imported")
    """
    platform = folder_platform(make_folder_plugin("half", code))
    assert platform.events.subscriptions() == []


async def test_reload_enables_a_plugin_its_new_manifest_enables(
    make_folder_plugin: Callable[..., Path],
) -> None:
    folder = make_folder_plugin("later", "", {"name": "later", "enabled": False})
    async with folder_platform(folder) as platform:
        (folder / "later" / "plugin.json").write_text('{"name": "later"}')
        await platform.plugins.reload_plugin("later")
        assert platform.plugins.get("later").state is PluginState.DISCOVERED
        await platform.plugins.start_plugin("later")
        assert platform.plugins.get("later").state is PluginState.RUNNING


def test_list_keys_take_json_or_commas() -> None:
    assert Config(environ={"CHATTERFIX_PLUGINS__DISABLED": '["a,b", "c"]'}).get(
        "plugins.disabled"
    ) == ["a,b", "c"]
    assert Config(environ={"CHATTERFIX_DISABLE_PLUGINS": "a, b"}).get("plugins.disabled") == [
        "a",
        "b",
    ]


async def test_reload_keeps_sibling_plugins_of_a_shared_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from chatterfix.manifest import structure_manifest
    from chatterfix.plugin_sources import Candidate, Loaded

    package = tmp_path / "acme"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "shared.py").write_text("COUNTER = []\n")
    for name in ("a", "b"):
        (package / f"{name}.py").write_text("from acme import shared\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def candidate(name: str) -> Candidate:
        manifest = structure_manifest({"name": f"acme_{name}"}, name)
        return Candidate(
            name=f"acme_{name}",
            origin="entrypoint",
            location="acme",
            load=lambda: Loaded(importlib.import_module(f"acme.{name}"), manifest),
            module_prefixes=("acme",),
            own_module=f"acme.{name}",
        )

    platform = Platform(load_entrypoints=False, builtins=False)
    for name in ("a", "b"):
        platform.plugins.add_candidate(candidate(name))
    module_b = sys.modules["acme.b"]
    async with platform:
        await platform.plugins.reload_plugin("acme_a")
    assert sys.modules["acme.b"] is module_b
    assert platform.plugins.get("acme_a").plugin.shared is module_b.shared
    for name in [n for n in sys.modules if n == "acme" or n.startswith("acme.")]:
        del sys.modules[name]


async def test_events_reach_one_generation_during_a_reload() -> None:
    heard: list[tuple[int, str]] = []

    class Watcher:
        PLUGIN_MANIFEST = {"name": "watcher"}
        generation = 0

        @hookimpl
        def register_event_handlers(self) -> list[Any]:
            generation = self.generation
            return [("work.*", lambda event: heard.append((generation, event.type)))]

        @hookimpl
        async def startup(self, platform: Platform) -> None:
            await platform.events.emit("work.started", {})

    plugin = Watcher()
    async with Platform(plugins=[plugin], load_entrypoints=False, builtins=False) as platform:
        plugin.generation = 1
        await platform.plugins.reload_plugin("watcher")
    assert heard == [(0, "work.started"), (1, "work.started")]


def test_bad_history_size_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATTERFIX_EVENTS__HISTORY_SIZE", "abc")
    with pytest.raises(ConfigError, match=r"events\.history_size"):
        Platform(load_entrypoints=False, builtins=False)


async def test_errors_raised_in_plugin_middleware_are_json(serve: Any) -> None:
    from chatterfix import APIError

    class Guard:
        PLUGIN_MANIFEST = {"name": "guard"}

        @hookimpl
        def register_middleware(self) -> list[Any]:
            class RequireKey:
                def __init__(self, app: Any) -> None:
                    self.app = app

                async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                    if scope["type"] == "http" and scope["path"].startswith("/api/"):
                        raise APIError(401, "an API key is required", "unauthorized")
                    await self.app(scope, receive, send)

            return [RequireKey]

    async with serve(Platform(plugins=[Guard()], load_entrypoints=False, builtins=False)) as c:
        refused = await c.get("/api/anything")
        allowed = await c.get("/health/live")
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "an API key is required"
    assert allowed.status_code == 200


def test_register_commands_may_be_async_and_take_no_arguments() -> None:
    import click

    from chatterfix.cli.plugin_commands import commands_by_plugin

    class Tools:
        PLUGIN_MANIFEST = {"name": "tools"}

        @hookimpl
        async def register_commands(self, cli: click.Group) -> None:
            cli.add_command(click.Command("calibrate", callback=lambda: None))

    class Nothing:
        PLUGIN_MANIFEST = {"name": "nothing"}

        @hookimpl
        def register_commands(self) -> None:
            return None

    platform = Platform(plugins=[Tools(), Nothing()], load_entrypoints=False, builtins=False)
    found = commands_by_plugin(platform)
    assert list(found["tools"]) == ["calibrate"]
    assert found["nothing"] == {}


async def test_sys_exit_in_plugin_code_is_contained(serve: Any) -> None:
    class Quitter:
        PLUGIN_MANIFEST = {"name": "quitter"}

        @hookimpl
        def startup(self) -> None:
            sys.exit("argparse said no")

    class Sulker:
        PLUGIN_MANIFEST = {"name": "sulker"}

        @hookimpl
        def register_routes(self) -> list[Any]:
            from starlette.routing import Route

            def leave(request: Any) -> None:
                sys.exit("bye from a handler")

            return [Route("/api/sulker/leave", leave)]

        @hookimpl
        async def health_check(self) -> dict[str, str]:
            sys.exit("bye from a health check")

    platform = Platform(plugins=[Quitter(), Sulker()], load_entrypoints=False, builtins=False)
    seen: list[str] = []

    def exits(event: Event) -> None:
        seen.append(event.type)
        sys.exit("bye from an event handler")

    platform.events.subscribe("leave.*", exits)
    async with serve(platform) as client:
        left = await client.get("/api/sulker/leave")
        health = (await client.get("/health")).json()
        await platform.events.emit("leave.now", {})
        still = await client.get("/health/live")
    assert platform.plugins.get("quitter").error_message == (
        "startup failed: PluginExit: the hook called sys.exit('argparse said no')"
    )
    assert left.status_code == 500
    assert left.json()["error"]["code"] == "internal_error"
    assert "sys.exit('bye from a health check')" in health["plugins"]["sulker"]["error"]
    assert platform.events.dead_letters[0].error == "SystemExit: bye from an event handler"
    assert still.status_code == 200


async def test_health_is_unhealthy_only_when_nothing_is_well(serve: Any) -> None:
    def reporting(name: str, status: str) -> object:
        def health_check(self: object) -> dict[str, str]:
            return {"status": status}

        manifest = {"name": name}
        return type(
            name, (), {"PLUGIN_MANIFEST": manifest, "health_check": hookimpl(health_check)}
        )()

    sick = Platform(
        plugins=[reporting("a", "unhealthy"), reporting("c", "unhealthy")],
        load_entrypoints=False,
        builtins=False,
    )
    mixed = Platform(
        plugins=[reporting("a", "unhealthy"), reporting("b", "healthy")],
        load_entrypoints=False,
        builtins=False,
    )
    async with serve(sick) as client:
        down = await client.get("/health")
    async with serve(mixed) as client:
        partly = await client.get("/health")
    assert (down.status_code, down.json()["status"]) == (503, "unhealthy")
    assert (partly.status_code, partly.json()["status"]) == (200, "degraded")


async def test_remote_apps_are_not_reported_healthy_without_a_check(serve: Any) -> None:
    platform = Platform(
        plugins=[routes_plugin("local", "/api/local/x")], load_entrypoints=False, builtins=False
    )
    async with serve(platform) as client:
        await platform.plugins.register_plugin({"name": "far", "url": "http://127.0.0.1:9"})
        status = (await client.get("/platform/status")).json()
        health = (await client.get("/health")).json()
    assert status["plugins"]["far"]["health"] == "unknown"
    assert status["plugins"]["far"]["last_heartbeat"] is None
    # The remote app counts by its instance in service discovery: not healthy before a check
    # has passed (and none can: nothing listens there).
    assert status["services"]["total_services"] == 2
    assert status["services"]["healthy_services"] == 1
    assert health["status"] == "healthy"


async def test_a_longer_cycle_is_named_in_order() -> None:
    def needing(name: str, other: str) -> object:
        manifest = {"name": name, "dependencies": [other]}
        return type(name, (), {"PLUGIN_MANIFEST": manifest})()

    plugins = [needing("a", "b"), needing("b", "c"), needing("c", "a")]
    async with Platform(plugins=plugins, load_entrypoints=False, builtins=False) as platform:
        messages = {platform.plugins.get(name).error_message for name in "abc"}
    [message] = messages
    path = message.removeprefix("dependency cycle: ").split(" -> ")
    assert path[0] == path[-1]
    assert sorted(path[:-1]) == ["a", "b", "c"]
    needs = {"a": "b", "b": "c", "c": "a"}
    steps = dict(itertools.pairwise(path))
    assert steps == needs  # read as "a needs b, b needs c, c needs a"
