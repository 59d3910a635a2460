"""The command line, run in-process with click's runner and as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from chatterfix import __version__
from chatterfix.cli import cli


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHATTERFIX_NO_PLUGIN_COMMANDS", "1")


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_version() -> None:
    assert run("--version").strip() == f"chatterfix, version {__version__}"


def test_hooks_lists_every_hook_with_its_signature() -> None:
    rows = json.loads(run("hooks", "--json"))
    by_name = {row["name"]: row for row in rows}
    assert by_name["register_models"]["signature"] == "register_models(metadata)"
    assert by_name["config_schema"]["signature"] == "config_schema()"
    assert by_name["startup"]["summary"] == "Prepare the plugin to serve."
    assert "register_routes(platform)" in run("hooks")


def test_list_shows_plugins_states_origins_and_load_errors(
    make_folder_plugin: Callable[..., Path],
) -> None:
    folder = make_folder_plugin(
        "gauges",
        "import chatterfix\n\n@chatterfix.hookimpl\ndef startup(platform):\n    pass\n",
    )
    make_folder_plugin("broken", "import nowhere_to_be_found\n")
    data = json.loads(run("list", "--plugins-dir", str(folder), "--json"))
    plugins = {p["name"]: p for p in data["plugins"]}
    assert plugins["gauges"]["origin"] == "folder"
    assert plugins["gauges"]["hooks"] == ["startup"]
    assert plugins["gauges"]["status"] == "discovered"
    assert plugins["hello"]["origin"] == "builtin"
    assert data["load_errors"][0]["name"] == "broken"
    table = run("list", "--plugins-dir", str(folder))
    assert "gauges" in table
    assert "failed to load" in table


def test_info_reports_paths() -> None:
    data = json.loads(run("info", "--json"))
    assert data["chatterfix"] == __version__
    assert data["entry_point_group"] == "chatterfix"
    assert data["gateway"] == "http://127.0.0.1:8000"
    assert data["config_file"] is None
    assert any(line.startswith("hello = ") for line in data["entry_points"])


def test_info_finds_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "chatterfix.toml").write_text("[gateway]\nport = 9100\n")
    data = json.loads(run("info", "--json"))
    assert data["config_file"] == str(tmp_path / "chatterfix.toml")
    assert data["gateway"] == "http://127.0.0.1:9100"


def test_status_without_a_gateway_says_so() -> None:
    result = CliRunner().invoke(cli, ["status", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "no gateway answers at http://127.0.0.1:9" in result.output


def test_start_in_strict_mode_refuses_a_broken_plugin(
    make_folder_plugin: Callable[..., Path], tmp_path: Path
) -> None:
    folder = make_folder_plugin("broken", "raise ImportError('missing driver')\n")
    result = subprocess.run(
        [sys.executable, "-m", "chatterfix", "start", "--port", "9", "--plugins-dir", str(folder)],
        capture_output=True,
        text=True,
        env={"CHATTERFIX_STRICT_PLUGINS": "1", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 1
    # The plugin's traceback is logged for the operator; the command itself ends cleanly.
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error:")
    assert "missing driver" in last_line
