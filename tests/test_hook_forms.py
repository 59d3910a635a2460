"""Every hook works both as a plain function and as a coroutine function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import pytest
import sqlalchemy as sa

from chatterfix import Platform, hookimpl

pytestmark = pytest.mark.anyio


def plugin_with(hook: str, body: Callable[..., Any], *, is_async: bool) -> object:
    """A plugin named ``formtest`` whose only hook ``hook`` runs ``body``, sync or async."""
    # pluggy reads the argument names, so the implementation is written out with the spec's.
    argument = {"register_models": "metadata", "register_commands": "cli"}.get(hook, "platform")
    if hook == "config_schema":
        argument = ""
    call = f"{argument}={argument}" if argument else ""
    source = (
        f"{'async ' if is_async else ''}def {hook}(self{', ' + argument if argument else ''}):\n"
        f"    return body({call})\n"
    )
    namespace: dict[str, Any] = {"body": body}
    exec(source, namespace)
    manifest = {"name": "formtest"}
    return type("FormTest", (), {"PLUGIN_MANIFEST": manifest, hook: hookimpl(namespace[hook])})()


def route(platform: Platform) -> list[Any]:
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    return [Route("/api/formtest/ping", lambda request: PlainTextResponse("pong"))]


def middleware(platform: Platform) -> list[Any]:
    class Stamp:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def stamped(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message["headers"], (b"x-form", b"1")]
                await send(message)

            await self.app(scope, receive, stamped)

    return [Stamp]


HEARD: list[str] = []
CALLED: list[str] = []


CASES: dict[str, Callable[..., Any]] = {
    "register_routes": route,
    "register_middleware": middleware,
    "register_event_handlers": lambda platform: [("form.*", lambda e: HEARD.append(e.type))],
    "register_models": lambda metadata: sa.Table(
        "formtest_rows", metadata, sa.Column("id", sa.Integer, primary_key=True)
    ),
    "register_migrations": lambda platform: {2: lambda op: None},
    "register_permissions": lambda platform: {"formtest.use": "Use it"},
    "register_ai_providers": lambda platform: type("P", (), {"name": "formtest_ai"})(),
    "register_commands": lambda cli: cli.add_command(click.Command("formtest-cmd")),
    "config_schema": lambda: {"level": {"type": "integer", "default": 4}},
    "startup": lambda platform: CALLED.append("startup"),
    "shutdown": lambda platform: CALLED.append("shutdown"),
    "health_check": lambda platform: {"status": "degraded", "why": "form"},
}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("hook", sorted(CASES))
async def test_hook_in_both_forms(hook: str, is_async: bool, serve: Any) -> None:
    HEARD.clear()
    CALLED.clear()
    plugin = plugin_with(hook, CASES[hook], is_async=is_async)
    platform = Platform(plugins=[plugin], load_entrypoints=False, builtins=False)
    if hook == "register_commands":
        import anyio

        from chatterfix.cli.plugin_commands import commands_by_plugin

        # The command line calls it outside any event loop, as here in a worker thread.
        found = await anyio.to_thread.run_sync(commands_by_plugin, platform)
        assert list(found["formtest"]) == ["formtest-cmd"]
        return
    checks = {
        "register_routes": lambda: ping.text == "pong",
        "register_middleware": lambda: live.headers.get("x-form") == "1",
        "register_event_handlers": lambda: HEARD == ["form.done"],
        "register_models": lambda: "formtest_rows" in platform.metadata.tables,
        "register_migrations": lambda: platform.plugins.get("formtest").schema_version == 2,
        "register_permissions": lambda: "formtest.use" in platform.permissions,
        "register_ai_providers": lambda: "formtest_ai" in platform.ai_providers,
        "config_schema": lambda: platform.config.get("formtest.level") == 4,
        "startup": lambda: CALLED == ["startup"],
        "shutdown": lambda: CALLED == [],
        "health_check": lambda: health["plugins"]["formtest"]["why"] == "form",
    }
    async with serve(platform) as client:
        assert platform.plugins.get("formtest").state.value == "running"
        ping = await client.get("/api/formtest/ping")
        live = await client.get("/health/live")
        health = (await client.get("/health")).json()
        await platform.events.emit("form.done", {})
        assert checks[hook](), hook
    if hook == "shutdown":
        assert CALLED == ["shutdown"]
