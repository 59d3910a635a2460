"""Discovery, validation, dependency order and containment, driven through the real gateway."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chatterfix import Platform, hookimpl
from chatterfix.plugins import PluginLoadError, PluginState

pytestmark = pytest.mark.anyio

ROUTE_PLUGIN = """
from starlette.responses import JSONResponse
from starlette.routing import Route
import chatterfix

async def handler(request):
    return JSONResponse({{"plugin": "{name}", "answer": {answer}}})

@chatterfix.hookimpl
def register_routes(platform):
    return [Route("/api/{name}/answer", handler)]
"""


def route_plugin(name: str, answer: int = 42) -> str:
    return ROUTE_PLUGIN.format(name=name, answer=answer)


def folder_platform(folder: Path, **config: Any) -> Platform:
    return Platform(config=config, plugins_dir=folder, load_entrypoints=False, builtins=False)


async def test_folder_plugin_is_served(make_folder_plugin: Callable[..., Path], serve: Any) -> None:
    folder = make_folder_plugin("work_orders", route_plugin("work_orders"))
    async with serve(folder_platform(folder)) as client:
        response = await client.get("/api/work_orders/answer")
        plugins = (await client.get("/platform/plugins")).json()["plugins"]
    assert response.json() == {"plugin": "work_orders", "answer": 42}
    assert plugins[0]["origin"] == "folder"
    assert plugins[0]["status"] == "running"
    assert plugins[0]["hooks"] == ["register_routes"]


async def test_folder_plugin_relative_imports_and_no_collisions(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    code = """
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    import chatterfix
    from .helpers import VALUE

    async def handler(request):
        return JSONResponse({"value": VALUE})

    @chatterfix.hookimpl
    def register_routes(platform):
        return [Route(f"/api/{VALUE}/value", handler)]
    """
    folder = make_folder_plugin("one", code)
    (folder / "one" / "helpers.py").write_text("VALUE = 'one'\n")
    make_folder_plugin("two", code)
    (folder / "two" / "helpers.py").write_text("VALUE = 'two'\n")
    async with serve(folder_platform(folder)) as client:
        assert (await client.get("/api/one/value")).json() == {"value": "one"}
        assert (await client.get("/api/two/value")).json() == {"value": "two"}


async def test_bad_manifest_is_a_load_error_naming_file_and_field(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    folder = make_folder_plugin("good", route_plugin("good"))
    make_folder_plugin("bad", route_plugin("bad"), {"name": "bad", "port": "eighty"})
    platform = folder_platform(folder)
    [error] = platform.plugins.load_errors
    assert str(folder / "bad" / "plugin.json") in error.message
    assert "field 'port'" in error.message
    async with serve(platform) as client:
        assert (await client.get("/api/good/answer")).status_code == 200
        listed = (await client.get("/platform/plugins")).json()
    assert "field 'port'" in listed["load_errors"][0]["message"]


async def test_import_error_is_recorded_and_the_rest_load(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    folder = make_folder_plugin("broken", "import does_not_exist_anywhere\n")
    make_folder_plugin("fine", route_plugin("fine"))
    platform = folder_platform(folder)
    [error] = platform.plugins.load_errors
    assert error.name == "broken"
    assert "ModuleNotFoundError" in error.message
    assert "does_not_exist_anywhere" in error.traceback
    async with serve(platform) as client:
        assert (await client.get("/api/fine/answer")).status_code == 200
        status = (await client.get("/platform/status")).json()
    assert status["load_errors"][0]["name"] == "broken"


def test_strict_mode_makes_a_load_error_fatal(
    make_folder_plugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder_plugin("broken", "raise RuntimeError('boom at import')\n")
    monkeypatch.setenv("CHATTERFIX_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="boom at import"):
        folder_platform(folder)


def test_misspelled_hook_suggests_the_real_one(make_folder_plugin: Callable[..., Path]) -> None:
    folder = make_folder_plugin(
        "typo",
        """
        import chatterfix

        @chatterfix.hookimpl
        def register_route(platform):
            return []
        """,
    )
    platform = folder_platform(folder)
    record = platform.plugins.get("typo")
    assert record.state is PluginState.ERROR
    assert "unknown hook 'register_route'" in record.error_message
    assert "did you mean 'register_routes'?" in record.error_message


def test_unmarked_hook_function_is_warned_about(make_folder_plugin: Callable[..., Path]) -> None:
    folder = make_folder_plugin("unmarked", "def startup(platform):\n    pass\n")
    record = folder_platform(folder).plugins.get("unmarked")
    assert record.warnings == [
        "'startup' looks like a hook but is not marked with @chatterfix.hookimpl"
    ]


def test_argument_not_in_spec_is_a_load_error(make_folder_plugin: Callable[..., Path]) -> None:
    folder = make_folder_plugin(
        "wrongargs",
        "import chatterfix\n\n@chatterfix.hookimpl\ndef startup(platfrom):\n    pass\n",
    )
    [error] = folder_platform(folder).plugins.load_errors
    assert "platfrom" in error.message


class Recorder:
    """Plugin objects that note when they start and stop."""

    def __init__(self, name: str, log: list[str], depends: list[str] | None = None) -> None:
        self.PLUGIN_MANIFEST = {"name": name, "version": "1.2.0", "dependencies": depends or []}
        self.name = name
        self.log = log

    @hookimpl
    def startup(self, platform: Platform) -> None:
        self.log.append(f"start {self.name}")

    @hookimpl
    async def shutdown(self, platform: Platform) -> None:
        self.log.append(f"stop {self.name}")


def code_platform(*plugins: object, **config: Any) -> Platform:
    return Platform(config=config, plugins=plugins, load_entrypoints=False, builtins=False)


async def test_dependencies_start_first_and_stop_last() -> None:
    log: list[str] = []
    platform = code_platform(
        Recorder("app", log, ["cmms>=1.0", "ai"]),
        Recorder("ai", log, ["cmms"]),
        Recorder("cmms", log),
    )
    async with platform:
        assert platform.plugins.start_order == ["cmms", "ai", "app"]
    assert log == ["start cmms", "start ai", "start app", "stop app", "stop ai", "stop cmms"]


async def test_cycle_is_named_and_others_run(serve: Any) -> None:
    log: list[str] = []
    platform = code_platform(
        Recorder("a", log, ["b"]), Recorder("b", log, ["a"]), Recorder("c", log)
    )
    async with serve(platform) as client:
        status = (await client.get("/platform/status")).json()
    for name in ("a", "b"):
        assert status["plugins"][name]["status"] == "error"
        message = status["plugins"][name]["error_message"]
        assert message.startswith("dependency cycle: ")
        assert "a -> b" in message or "b -> a" in message
    assert status["plugins"]["c"]["status"] == "running"
    assert log[0] == "start c"


async def test_missing_and_unsatisfied_dependencies_put_only_the_dependent_in_error() -> None:
    log: list[str] = []
    platform = code_platform(
        Recorder("needs_ghost", log, ["ghost"]),
        Recorder("needs_new_core", log, ["core>=2"]),
        Recorder("core", log),
        Recorder("needs_broken_chain", log, ["needs_ghost"]),
    )
    async with platform:
        records = platform.plugins.records
        assert records["needs_ghost"].error_message == (
            "missing dependency 'ghost' (requires 'ghost')"
        )
        assert records["needs_new_core"].error_message == (
            "dependency 'core>=2' not satisfied: 'core' is version 1.2.0"
        )
        assert records["needs_broken_chain"].error_message.startswith(
            "dependency 'needs_ghost' is not running (error: missing dependency"
        )
        assert records["core"].state is PluginState.RUNNING


def exploding(hook: str) -> object:
    """A plugin whose ``hook`` raises."""

    def explode(self: object, platform: Platform) -> None:
        raise RuntimeError(f"{hook} went wrong")

    explode.__name__ = hook
    namespace = {hook: hookimpl(explode), "PLUGIN_MANIFEST": {"name": f"explodes_in_{hook}"}}
    return type(f"Explodes_{hook}", (), namespace)()


class Healthy:
    PLUGIN_MANIFEST = {"name": "healthy"}

    @hookimpl
    def register_routes(self, platform: Platform) -> list[Any]:
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        return [Route("/api/healthy/ping", lambda request: PlainTextResponse("pong"))]


@pytest.mark.parametrize("hook", ["startup", "register_routes"])
async def test_hook_that_raises_is_contained(hook: str, serve: Any) -> None:
    platform = code_platform(exploding(hook), Healthy())
    name = f"explodes_in_{hook}"
    async with serve(platform) as client:
        assert (await client.get("/api/healthy/ping")).text == "pong"
        status = (await client.get("/platform/status")).json()
        unavailable = await client.get(f"/api/{name}/anything")
        health = await client.get("/health")
    assert status["plugins"][name]["status"] == "error"
    assert status["plugins"][name]["error_message"] == (
        f"{hook} failed: RuntimeError: {hook} went wrong"
    )
    assert "went wrong" in platform.plugins.get(name).error_traceback
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "plugin_unavailable"
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"


async def test_hook_health_check_raising_or_hanging_is_unhealthy_not_fatal(serve: Any) -> None:
    import anyio

    class Hanging:
        PLUGIN_MANIFEST = {"name": "hanging"}

        @hookimpl
        async def health_check(self, platform: Platform) -> dict[str, str]:
            await anyio.sleep(30)
            return {"status": "healthy"}

    class Degraded:
        PLUGIN_MANIFEST = {"name": "degraded"}

        @hookimpl
        def health_check(self) -> dict[str, Any]:
            return {"status": "degraded", "queue": 12}

    platform = code_platform(
        exploding("health_check"), Hanging(), Degraded(), Healthy(), plugins={"health_timeout": 0.2}
    )
    async with serve(platform) as client:
        health = (await client.get("/health")).json()
        assert (await client.get("/api/healthy/ping")).status_code == 200
    plugins = health["plugins"]
    assert health["status"] == "degraded"
    assert plugins["explodes_in_health_check"]["status"] == "unhealthy"
    assert "health_check went wrong" in plugins["explodes_in_health_check"]["error"]
    assert plugins["explodes_in_health_check"]["state"] == "running"
    assert plugins["hanging"] == {
        "status": "unhealthy",
        "error": "health check timed out (0.2s)",
        "state": "running",
    }
    assert plugins["degraded"] == {"status": "degraded", "queue": 12, "state": "running"}
    assert plugins["healthy"]["status"] == "healthy"


async def test_route_collision_names_both_plugins(serve: Any) -> None:
    class Copy(Healthy):
        PLUGIN_MANIFEST = {"name": "copycat"}

    async with serve(code_platform(Healthy(), Copy())) as client:
        assert (await client.get("/api/healthy/ping")).text == "pong"
        status = (await client.get("/platform/status")).json()
    assert status["plugins"]["copycat"]["status"] == "error"
    assert status["plugins"]["copycat"]["error_message"] == (
        "route GET /api/healthy/ping of plugin 'copycat' collides with plugin 'healthy'"
    )


async def test_route_under_platform_paths_is_refused() -> None:
    class Squatter:
        PLUGIN_MANIFEST = {"name": "squatter"}

        @hookimpl
        def register_routes(self) -> list[Any]:
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route

            return [Route("/platform/status", lambda r: PlainTextResponse("mine"))]

    async with code_platform(Squatter()) as platform:
        message = platform.plugins.get("squatter").error_message
    assert message.endswith("collides with plugin 'platform'")


async def test_disabled_by_config_environment_and_manifest(
    make_folder_plugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, serve: Any
) -> None:
    folder = make_folder_plugin("by_env", "raise RuntimeError('never imported')\n")
    make_folder_plugin("by_config", "raise RuntimeError('never imported')\n")
    make_folder_plugin(
        "by_manifest", route_plugin("by_manifest"), {"name": "by_manifest", "enabled": False}
    )
    make_folder_plugin("kept", route_plugin("kept"))
    monkeypatch.setenv("CHATTERFIX_DISABLE_PLUGINS", "by_env, other")
    platform = folder_platform(folder, plugins={"disabled": ["by_config"]})
    assert platform.plugins.load_errors == []
    async with serve(platform) as client:
        states = {
            p["name"]: p["status"]
            for p in (await client.get("/platform/plugins")).json()["plugins"]
        }
        start = await client.post("/platform/plugins/by_manifest/start")
    assert states == {
        "by_config": "disabled",
        "by_env": "disabled",
        "by_manifest": "disabled",
        "kept": "running",
    }
    assert start.status_code == 409
    assert start.json()["error"]["message"] == "plugin 'by_manifest' is disabled"


async def test_only_list_selects_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATTERFIX_ONLY_PLUGINS", "b")
    log: list[str] = []
    async with code_platform(Recorder("a", log), Recorder("b", log)) as platform:
        assert platform.plugins.get("a").state is PluginState.DISABLED
    assert log == ["start b", "stop b"]


async def test_auto_start_false_waits_for_an_explicit_start(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    folder = make_folder_plugin("lazy", route_plugin("lazy"), {"name": "lazy", "auto_start": False})
    async with serve(folder_platform(folder)) as client:
        assert (await client.get("/api/lazy/answer")).status_code == 503
        started = await client.post("/platform/plugins/lazy/start")
        assert started.json()["status"] == "running"
        assert (await client.get("/api/lazy/answer")).status_code == 200


async def test_stop_cascades_to_dependents_and_start_needs_dependencies(serve: Any) -> None:
    log: list[str] = []
    platform = code_platform(Recorder("base", log), Recorder("top", log, ["base"]))
    async with serve(platform) as client:
        stopped = (await client.post("/platform/plugins/base/stop")).json()
        refused = await client.post("/platform/plugins/top/start")
        await client.post("/platform/plugins/base/start")
        restarted = await client.post("/platform/plugins/top/start")
        again = await client.post("/platform/plugins/top/stop")
        twice = await client.post("/platform/plugins/top/stop")
    assert stopped["affected"] == ["top", "base"]
    assert log[2:4] == ["stop top", "stop base"]
    assert refused.status_code == 409
    assert "dependency 'base' is not running (stopped)" in refused.json()["error"]["message"]
    assert restarted.json()["status"] == "running"
    assert again.json()["affected"] == ["top"]
    assert twice.status_code == 409


async def test_reload_picks_up_edited_code(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    folder = make_folder_plugin("editable", route_plugin("editable", 1))
    async with serve(folder_platform(folder)) as client:
        assert (await client.get("/api/editable/answer")).json()["answer"] == 1
        (folder / "editable" / "main.py").write_text(route_plugin("editable", 2))
        reloaded = await client.post("/platform/plugins/editable/reload")
        assert reloaded.status_code == 200
        assert (await client.get("/api/editable/answer")).json()["answer"] == 2


async def test_failed_reload_keeps_the_old_code_serving(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    folder = make_folder_plugin("fragile", route_plugin("fragile", 1))
    async with serve(folder_platform(folder)) as client:
        (folder / "fragile" / "main.py").write_text("def broken(:\n")
        failed = await client.post("/platform/plugins/fragile/reload")
        assert failed.status_code == 409
        assert "SyntaxError" in failed.json()["error"]["message"]
        assert (await client.get("/api/fragile/answer")).json()["answer"] == 1
        failing_startup = route_plugin("fragile", 3) + (
            "\n@chatterfix.hookimpl\ndef startup(platform):\n    raise ValueError('nope')\n"
        )
        (folder / "fragile" / "main.py").write_text(failing_startup)
        failed = await client.post("/platform/plugins/fragile/reload")
        assert "startup failed: ValueError: nope" in failed.json()["error"]["message"]
        assert (await client.get("/api/fragile/answer")).json()["answer"] == 1
        (folder / "fragile" / "main.py").write_text(route_plugin("fragile", 4))
        assert (await client.post("/platform/plugins/fragile/reload")).status_code == 200
        assert (await client.get("/api/fragile/answer")).json()["answer"] == 4


async def test_remote_app_manifest_is_registered_without_code(
    make_folder_plugin: Callable[..., Path],
) -> None:
    folder = make_folder_plugin(
        "remote", None, {"name": "remote", "url": "http://127.0.0.1:8100", "port": 8100}
    )
    async with folder_platform(folder) as platform:
        record = platform.plugins.get("remote")
        assert record.is_remote
        assert record.state is PluginState.RUNNING
        added = await platform.plugins.register_plugin(
            {"name": "other_remote", "url": "http://127.0.0.1:8200"}
        )
        assert added.state is PluginState.RUNNING
        assert platform.plugins.get_plugin_status("other_remote")["url"] == (
            "http://127.0.0.1:8200"
        )


def test_folder_without_code_or_url_names_the_problem(
    make_folder_plugin: Callable[..., Path],
) -> None:
    folder = make_folder_plugin("empty", None)
    [error] = folder_platform(folder).plugins.load_errors
    assert "field 'module'" in error.message
    assert "expected main.py" in error.message


def test_duplicate_names_keep_the_first(make_folder_plugin: Callable[..., Path]) -> None:
    folder = make_folder_plugin("dup", route_plugin("dup"))
    log: list[str] = []
    platform = Platform(
        plugins=[Recorder("dup", log)],
        plugins_dir=folder,
        load_entrypoints=False,
        builtins=False,
    )
    assert platform.plugins.get("dup").origin == "folder"
    assert "already taken" in platform.plugins.load_errors[0].message


async def test_reload_refuses_a_renamed_manifest(
    make_folder_plugin: Callable[..., Path], serve: Any
) -> None:
    folder = make_folder_plugin("named", route_plugin("named"))
    async with serve(folder_platform(folder)) as client:
        (folder / "named" / "plugin.json").write_text('{"name": "renamed"}')
        failed = await client.post("/platform/plugins/named/reload")
        assert failed.status_code == 409
        assert "now names it 'renamed'" in failed.json()["error"]["message"]
        assert (await client.get("/api/named/answer")).status_code == 200
