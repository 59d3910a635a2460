"""``/platform/config`` and ``chatterfix config show|get|set``: sources, redaction, changes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from chatterfix import Platform
from chatterfix.cli import cli, main
from chatterfix.config import Config
from tests.helpers import gateway

FILE = '# plant 4\n[gateway]\nport = 9000\n\n[shop]\nlicence = "L-1"\napi_key = "sk-file"\n'
SHOP_MANIFEST = {
    "name": "shop",
    "config_schema": {
        "licence": {"type": "string", "secret": True},
        "size": {"type": "integer", "default": 1, "minimum": 1},
    },
}


class Shop:
    PLUGIN_MANIFEST = SHOP_MANIFEST


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding a ``chatterfix.toml``; its path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHATTERFIX_CONFIG", raising=False)
    path = tmp_path / "chatterfix.toml"
    path.write_text(FILE)
    return path


@pytest.fixture
def platform(here: Path) -> Platform:
    return Platform(
        config=Config({"ai": {"openai": {"api_key": "sk-code"}}}),
        plugins=[Shop()],
        load_entrypoints=False,
        builtins=False,
    )


# -- the endpoints ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_effective_config_with_sources_and_secrets_hidden(
    platform: Platform, serve: Any, here: Path
) -> None:
    async with serve(platform) as client:
        response = await client.get("/platform/config")
    assert response.status_code == 200
    body = response.json()
    assert (body["file"], body["file_error"]) == (str(here), None)
    shown = body["config"]
    assert shown["gateway.port"] == {"value": 9000, "source": "file"}
    assert shown["gateway.host"] == {"value": "127.0.0.1", "source": "defaults"}
    assert shown["shop.size"] == {"value": 1, "source": "schema"}
    assert shown["shop.licence"] == {"value": "********", "source": "file"}  # schema secret
    assert shown["shop.api_key"] == {"value": "********", "source": "file"}  # by its name
    assert shown["ai.openai.api_key"] == {"value": "********", "source": "code"}
    for secret in ("L-1", "sk-file", "sk-code"):
        assert secret not in response.text


@pytest.mark.anyio
async def test_one_key_a_table_and_unknown_keys(platform: Platform, serve: Any, here: Path) -> None:
    async with serve(platform) as client:
        port = (await client.get("/platform/config/gateway.port")).json()
        licence = (await client.get("/platform/config/shop.licence")).json()
        table = (await client.get("/platform/config/gateway")).json()
        missing = await client.get("/platform/config/no.such.key")
        odd = await client.get("/platform/config/a b")
    assert port == {
        "key": "gateway.port",
        "value": 9000,
        "source": "file",
        "origin": str(here),
        "secret": False,
    }
    assert (licence["value"], licence["secret"]) == ("********", True)
    assert table["config"]["gateway.port"] == {"value": 9000, "source": "file"}
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "config_key_not_found"
    assert odd.status_code == 422


@pytest.mark.anyio
async def test_put_sets_a_runtime_value_and_tells_watchers(platform: Platform, serve: Any) -> None:
    heard: list[tuple[str, Any]] = []
    async with serve(platform) as client:
        platform.config.watch("shop", lambda key, value: heard.append((key, value)))
        by_value = await client.put("/platform/config/shop.size", json={"value": 5})
        by_text = await client.put("/platform/config/shop.size", json={"text": "7"})
    assert by_value.status_code == 200
    assert by_value.json()["value"] == 5
    assert by_text.json() == {
        "key": "shop.size",
        "value": 7,
        "source": "runtime",
        "origin": "a runtime set",
        "secret": False,
    }
    assert heard == [("shop.size", 5), ("shop.size", 7)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("key", "body", "message"),
    [
        ("shop.size", {"value": 0}, "shop.size = 0 from a runtime set: expected an integer >= 1"),
        (
            "gateway.port",
            {"text": "abc"},
            "gateway.port = 'abc' from a runtime set: expected an integer between 1 and 65535",
        ),
    ],
)
async def test_put_refuses_a_value_that_does_not_fit(
    platform: Platform, serve: Any, key: str, body: dict[str, Any], message: str
) -> None:
    async with serve(platform) as client:
        before = platform.config.get(key)
        response = await client.put(f"/platform/config/{key}", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["key"], error["message"]) == ("invalid_config", key, message)
    assert error["expected"] == message.rpartition("expected ")[2]
    assert platform.config.get(key) == before


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1]", b'{"value": 1, "text": "1"}', b'{"text": 5}', b'{"colour": 1}'],
)
async def test_put_refuses_a_malformed_body(platform: Platform, serve: Any, body: bytes) -> None:
    async with serve(platform) as client:
        response = await client.put("/platform/config/shop.size", content=body)
    assert response.status_code == 422
    assert platform.config.source("shop.size") == "schema"


# -- the command line ------------------------------------------------------------------------


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["config", *args], env={"COLUMNS": "200", **(env or {})})


def test_show_prints_a_table_with_secrets_hidden(here: Path) -> None:
    result = run("show")
    assert result.exit_code == 0, result.output
    cells = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("│")
    ]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["gateway.port"] == ["9000", "file"]
    assert rows["shop.api_key"] == ["********", "file"]
    assert rows["hello.greeting"] == ["Hello", "schema"]  # the built-in plugin's default
    assert "sk-file" not in result.stdout
    assert str(here) in result.stdout
    revealed = run("show", "--show-secrets")
    assert "sk-file" in revealed.stdout


def test_show_json_matches_the_endpoint_shape(here: Path) -> None:
    data = json.loads(run("show", "--json").stdout)
    assert data["file"] == str(here)
    assert data["config"]["gateway.port"] == {"value": 9000, "source": "file"}
    assert data["config"]["shop.api_key"]["value"] == "********"


def test_get_prints_the_value_and_its_source(here: Path) -> None:
    assert run("get", "gateway.port").stdout == "9000\n"
    assert run("get", "gateway.port", "--source").stdout == f"9000\nsource: file ({here})\n"
    assert run("get", "hello.greeting").stdout == "Hello\n"
    assert run("get", "shop.api_key").stdout == "********\n"
    assert run("get", "shop.api_key", "--show-secrets").stdout == "sk-file\n"
    env = run("get", "gateway.port", "--source", env={"CHATTERFIX_GATEWAY__PORT": "9001"})
    assert env.stdout == "9001\nsource: env (environment variable CHATTERFIX_GATEWAY__PORT)\n"
    assert json.loads(run("get", "gateway").stdout)["port"] == 9000
    missing = run("get", "no.such.key")
    assert missing.exit_code == 1
    assert "no configuration key 'no.such.key'" in missing.output


def test_set_writes_the_file_and_keeps_the_other_keys(here: Path) -> None:
    result = run("set", "gateway.port", "9100")
    assert result.exit_code == 0, result.output
    assert f"gateway.port = 9100 written to {here}" in result.stdout
    assert "comments were not kept" in result.stdout
    assert run("set", "plugins.disabled", "a, b").exit_code == 0
    written = tomllib.loads(here.read_text())
    assert written == {
        "gateway": {"port": 9100},
        "shop": {"licence": "L-1", "api_key": "sk-file"},
        "plugins": {"disabled": ["a", "b"]},
    }


def test_set_refuses_an_invalid_value_and_writes_nothing(here: Path) -> None:
    for key, value, message in [
        ("gateway.port", "abc", "gateway.port = 'abc' from the command line: expected an integer"),
        ("platform.debug", "maybe", "platform.debug = 'maybe' from the command line: expected"),
        ("logging.level", "LOUD", "logging.level = 'LOUD' from the command line: expected one"),
    ]:
        result = run("set", key, value)
        assert result.exit_code == 2
        assert message in " ".join(result.output.replace("│", " ").split())
    assert here.read_text() == FILE


def test_set_creates_a_missing_chatterfix_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run("set", "events.backend", "redis://127.0.0.1:6379").exit_code == 0
    written = tomllib.loads((tmp_path / "chatterfix.toml").read_text())
    assert written == {"events": {"backend": "redis://127.0.0.1:6379"}}


def test_set_writes_the_file_named_by_chatterfix_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "etc" / "plant4.toml"
    target.parent.mkdir()
    target.write_text("")
    target.chmod(0o600)
    monkeypatch.setenv("CHATTERFIX_CONFIG", str(target))
    monkeypatch.setenv("CHATTERFIX_GATEWAY__HOST", "0.0.0.0")
    result = run("set", "gateway.host", "10.0.0.5")
    assert result.exit_code == 0, result.output
    assert tomllib.loads(target.read_text()) == {"gateway": {"host": "10.0.0.5"}}
    assert target.stat().st_mode & 0o777 == 0o600  # a file holding secrets stays private
    assert "note: environment variable CHATTERFIX_GATEWAY__HOST overrides it" in result.stdout


def test_a_broken_file_ends_config_commands_with_status_2(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # the message is boxed: keep the path on one line
    here.write_text('[gateway]\nport = "abc"\n')
    with pytest.raises(SystemExit) as exited:
        main(["config", "show"])
    assert exited.value.code == 2
    assert f"gateway.port = 'abc' from {here}: expected an integer" in " ".join(
        capsys.readouterr().err.replace("│", " ").split()
    )


def test_a_running_gateway_applies_config_set_through_the_file(tmp_path: Path) -> None:
    """The whole path in real processes: `chatterfix config set` rewrites the file, the
    gateway sees it change and the hello plugin answers with the new greeting."""
    path = tmp_path / "chatterfix.toml"
    path.write_text('[platform]\nwatch_interval = 0.05\n\n[hello]\ngreeting = "Hi"\n')

    def chatterfix(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chatterfix", "config", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    with gateway(sys.executable, cwd=tmp_path) as url:
        assert httpx.get(f"{url}/api/hello/maria").json()["message"] == "Hi, maria!"
        written = chatterfix("set", "hello.greeting", "Good morning")
        assert written.returncode == 0, written.stderr
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/api/hello/maria").json()["message"] != "Good morning, maria!":
            assert time.monotonic() < deadline, "the gateway did not pick up the file change"
            time.sleep(0.05)
        asked = chatterfix("get", "hello.greeting", "--source", "--url", url)
        refused = chatterfix("set", "gateway.port", "0")
    assert asked.stdout == f"Good morning\nsource: file ({path})\n"
    assert refused.returncode == 2
    assert tomllib.loads(path.read_text())["hello"] == {"greeting": "Good morning"}
