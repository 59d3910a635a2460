"""The real thing: `chatterfix start` as a process, a plugin pip-installed into a fresh venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.helpers import admin_headers, gateway, venv_seeing_project

pytestmark = pytest.mark.slow

PLUGIN_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "cmms-tools"
version = "3.1.4"
description = "Tools for the CMMS"
authors = [{ name = "Plant Engineering" }]

[project.entry-points.chatterfix]
cmms_tools = "cmms_tools.main"

[tool.hatch.build.targets.wheel]
packages = ["cmms_tools"]
"""

PLUGIN_MAIN = """
from starlette.responses import JSONResponse
from starlette.routing import Route
import chatterfix

GENERATION = {generation}


async def wrench(request):
    return JSONResponse({{"tool": "wrench", "generation": GENERATION}})


@chatterfix.hookimpl
def register_routes(platform):
    return [Route("/api/cmms_tools/wrench", wrench)]


@chatterfix.hookimpl
def health_check(platform):
    return {{"status": "healthy"}}
"""


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment that sees this project (and its dependencies) through a
    site directory, with the plugin distribution below pip-installed into it."""
    return venv_seeing_project(tmp_path_factory.mktemp("venv"))


@pytest.fixture(scope="module")
def plugin_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("dist") / "cmms-tools"
    (source / "cmms_tools").mkdir(parents=True)
    (source / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (source / "cmms_tools" / "__init__.py").write_text("")
    (source / "cmms_tools" / "main.py").write_text(PLUGIN_MAIN.format(generation=1))
    return source


def pip_install(python: str, source: Path) -> None:
    command = ["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([python, *command, str(source)], check=True)


@pytest.fixture(scope="module")
def installed(fresh_venv: Path, plugin_source: Path) -> Path:
    pip_install(str(fresh_venv), plugin_source)
    return fresh_venv


# Wide enough that rich does not wrap the messages the assertions look for.
text_output: dict[str, Any] = {
    "capture_output": True,
    "text": True,
    "check": True,
    "env": {**os.environ, "COLUMNS": "300"},
}


def test_installed_distribution_is_discovered_served_and_managed(
    installed: Path, plugin_source: Path, tmp_path: Path
) -> None:
    python = str(installed)
    listed = subprocess.run(
        [python, "-m", "chatterfix", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    entry = plugins["cmms_tools"]
    assert entry["origin"] == "entrypoint"
    assert entry["version"] == "3.1.4"
    assert entry["description"] == "Tools for the CMMS"
    assert entry["author"] == "Plant Engineering"
    assert plugins["hello"]["origin"] == "builtin"

    with gateway(python, cwd=tmp_path) as url:
        admin = admin_headers(tmp_path)
        assert httpx.get(url + "/api/cmms_tools/wrench").json() == {
            "tool": "wrench",
            "generation": 1,
        }
        listing = httpx.get(url + "/platform/plugins").json()["plugins"]
        assert {"cmms_tools", "hello"} <= {p["name"] for p in listing}

        stopped = httpx.post(url + "/platform/plugins/cmms_tools/stop", headers=admin).json()
        assert stopped["status"] == "stopped"
        assert httpx.get(url + "/api/cmms_tools/wrench").status_code == 503
        started = httpx.post(url + "/platform/plugins/cmms_tools/start", headers=admin)
        assert started.json()["status"] == "running"
        # Upgrade the installed distribution under the running gateway, then reload.
        # Upgrade the installed distribution under the running gateway, then reload.
        (plugin_source / "cmms_tools" / "main.py").write_text(PLUGIN_MAIN.format(generation=2))
        pyproject = plugin_source / "pyproject.toml"
        pyproject.write_text(pyproject.read_text().replace("3.1.4", "3.2.0"))
        pip_install(python, plugin_source)
        reloaded = httpx.post(url + "/platform/plugins/cmms_tools/reload", headers=admin)
        assert reloaded.status_code == 200, reloaded.text
        assert httpx.get(url + "/api/cmms_tools/wrench").json()["generation"] == 2
        assert httpx.get(url + "/platform/plugins/cmms_tools").json()["version"] == "3.2.0"

        cli = [python, "-m", "chatterfix", "plugin"]
        # The command line finds the administrator's token in the data folder of this test.
        cli_output = text_output | {"env": {**os.environ, "COLUMNS": "300"}}
        stop = subprocess.run([*cli, "stop", "cmms_tools", "--url", url], **cli_output)
        assert stop.stdout.strip() == "cmms_tools: stopped"
        refused = subprocess.run(
            [*cli, "stop", "cmms_tools", "--url", url], **cli_output | {"check": False}
        )
        assert refused.returncode == 1
        assert "409: plugin 'cmms_tools' is not running (stopped)" in refused.stderr
        start = subprocess.run([*cli, "start", "cmms_tools", "--url", url], **cli_output)
        assert start.stdout.strip() == "cmms_tools: running"
        reload = subprocess.run([*cli, "reload", "cmms_tools", "--url", url], **cli_output)
        assert reload.stdout.strip() == "cmms_tools: running"

        status = subprocess.run(
            [python, "-m", "chatterfix", "status", "--url", url],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "cmms_tools" in status.stdout
        assert "running" in status.stdout


SLOW_PLUGIN = """
import anyio
from starlette.responses import JSONResponse
from starlette.routing import Route
import chatterfix

STATE = {"open": False}


async def work(request):
    await anyio.sleep(0.02)
    if not STATE["open"]:
        return JSONResponse({"error": "served after shutdown"}, status_code=500)
    return JSONResponse({"generation": GENERATION})


@chatterfix.hookimpl
def startup(platform):
    STATE["open"] = True


@chatterfix.hookimpl
def shutdown(platform):
    STATE["open"] = False


@chatterfix.hookimpl
def register_routes(platform):
    return [Route("/api/busy/work", work)]
"""


def test_reload_under_load_fails_no_request(tmp_path: Path) -> None:
    folder = tmp_path / "apps" / "busy"
    folder.mkdir(parents=True)
    (folder / "plugin.json").write_text(json.dumps({"name": "busy", "version": "1.0.0"}))
    (folder / "main.py").write_text("GENERATION = 0\n" + SLOW_PLUGIN)

    async def load_and_reload(url: str) -> tuple[int, list[str], set[int]]:
        failures: list[str] = []
        generations: set[int] = set()
        done = 0
        stop = anyio.Event()

        async def hammer(client: httpx.AsyncClient) -> None:
            nonlocal done
            while not stop.is_set():
                response = await client.get(url + "/api/busy/work")
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    generations.add(response.json()["generation"])
                done += 1

        limits = httpx.Limits(max_connections=16)
        async with (
            httpx.AsyncClient(limits=limits, timeout=10) as client,
            anyio.create_task_group() as group,
        ):
            for _ in range(8):
                group.start_soon(hammer, client)
            for generation in range(1, 6):
                await anyio.sleep(0.3)
                (folder / "main.py").write_text(f"GENERATION = {generation}\n" + SLOW_PLUGIN)
                reply = await client.post(
                    url + "/platform/plugins/busy/reload", headers=admin_headers(tmp_path)
                )
                if reply.status_code != 200:
                    failures.append(f"reload: {reply.text}")
            await anyio.sleep(0.3)
            stop.set()
        return done, failures, generations

    with gateway(sys.executable, "--plugins-dir", str(tmp_path / "apps"), cwd=tmp_path) as url:
        done, failures, generations = anyio.run(load_and_reload, url)
    assert failures == []
    assert done > 200
    assert generations == {0, 1, 2, 3, 4, 5}


def test_cli_help_does_not_import_the_web_stack() -> None:
    code = textwrap.dedent(
        """
        import sys
        from chatterfix.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        web_stack = ("starlette", "sqlalchemy", "uvicorn", "httpx")
        heavy = sorted(name for name in web_stack if name in sys.modules)
        print("HEAVY", heavy)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "HEAVY []" in result.stdout
    assert "start" in result.stdout and "hooks" in result.stdout


def test_start_with_reload_serves_a_plugins_folder(tmp_path: Path) -> None:
    folder = tmp_path / "apps" / "gauges"
    folder.mkdir(parents=True)
    (folder / "plugin.json").write_text(json.dumps({"name": "gauges"}))
    (folder / "main.py").write_text(
        PLUGIN_MAIN.format(generation=7).replace("cmms_tools", "gauges")
    )
    apps = str(tmp_path / "apps")
    with gateway(sys.executable, "--reload", "--plugins-dir", apps, cwd=tmp_path) as url:
        assert httpx.get(url + "/api/gauges/wrench").json()["generation"] == 7


def test_sigterm_runs_plugin_shutdown_hooks(tmp_path: Path) -> None:
    folder = tmp_path / "apps" / "recorder"
    folder.mkdir(parents=True)
    (folder / "plugin.json").write_text(json.dumps({"name": "recorder"}))
    marker = tmp_path / "shutdown.txt"
    (folder / "main.py").write_text(
        "import chatterfix\n\n"
        "@chatterfix.hookimpl\n"
        "async def shutdown(platform):\n"
        f"    open({str(marker)!r}, 'w').write('bye')\n"
    )
    with gateway(sys.executable, "--plugins-dir", str(tmp_path / "apps"), cwd=tmp_path) as url:
        assert httpx.get(url + "/platform/plugins/recorder").json()["status"] == "running"
        assert not marker.exists()
    assert marker.read_text() == "bye"
