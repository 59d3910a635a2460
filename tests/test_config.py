"""Layered configuration: precedence, sources, environment coercion, watchers, redaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatterfix.config import Config, ConfigError


def test_layers_in_order_with_their_sources(tmp_path: Path) -> None:
    (tmp_path / "chatterfix.toml").write_text('[gateway]\nport = 9000\nhost = "0.0.0.0"\n')
    config = Config(
        {"gateway": {"host": "10.0.0.1"}},
        environ={"CHATTERFIX_GATEWAY__PORT": "9100"},
        cwd=tmp_path,
    )
    config.add_schema_defaults("hello", {"greeting": {"type": "string", "default": "Hi"}})
    assert (config.get("gateway.port"), config.source("gateway.port")) == (9100, "env")
    assert (config.get("gateway.host"), config.source("gateway.host")) == ("10.0.0.1", "code")
    assert (config.get("hello.greeting"), config.source("hello.greeting")) == ("Hi", "schema")
    assert config.source("platform.debug") == "defaults"
    assert config.get("gateway")["port"] == 9100
    assert config.get("no.such.key", "fallback") == "fallback"
    config.set("gateway.port", 9200)
    assert (config.get("gateway.port"), config.source("gateway.port")) == (9200, "runtime")


def test_environment_values_take_the_kind_of_their_default() -> None:
    config = Config(
        environ={
            "CHATTERFIX_DEBUG": "yes",
            "CHATTERFIX_GATEWAY__ACCESS_LOG": "off",
            "CHATTERFIX_GATEWAY__PORT": "8100",
            "CHATTERFIX_PLATFORM__NAME": "2024",
            "CHATTERFIX_HELLO__GREETING": "null",
            "CHATTERFIX_ONLY_PLUGINS": "hello, work_orders",
            "CHATTERFIX_MY_APP__LIMITS": '{"daily": 5}',
        }
    )
    assert config.get("platform.debug") is True
    assert config.get("gateway.access_log") is False
    assert config.get("gateway.port") == 8100
    assert config.get("platform.name") == "2024"
    assert config.get("hello.greeting") == "null"
    assert config.get("plugins.only") == ["hello", "work_orders"]
    assert config.get("my_app.limits") == {"daily": 5}


def test_watchers_hear_changes_to_their_key_and_below() -> None:
    config = Config(environ={})
    heard: list[tuple[str, Any]] = []
    config.watch("my_app", lambda key, value: heard.append((key, value)))
    config.watch("my_app.ai_provider", lambda key, value: heard.append(("exact", value)))
    config.set("my_app.ai_provider", "anthropic")
    config.set("my_app.ai_provider", "anthropic")  # unchanged: nobody is told
    config.set("other.key", 1)
    assert heard == [("my_app.ai_provider", "anthropic"), ("exact", "anthropic")]


def test_effective_config_names_sources_and_hides_secrets() -> None:
    config = Config(
        {"ai": {"openai": {"api_key": "sk-live-123", "max_tokens": 512}}},
        environ={"CHATTERFIX_DB__PASSWORD": "hunter2"},
    )
    shown = config.effective()
    assert shown["ai.openai.api_key"] == {"value": "********", "source": "code"}
    assert shown["ai.openai.max_tokens"] == {"value": 512, "source": "code"}
    assert shown["db.password"] == {"value": "********", "source": "env"}
    assert shown["gateway.port"] == {"value": 8000, "source": "defaults"}
    assert config.effective(redact=False)["db.password"]["value"] == "hunter2"


def test_broken_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "chatterfix.toml"
    path.write_text("[gateway\nport = 1\n")
    with pytest.raises(ConfigError, match=r"chatterfix\.toml: invalid TOML"):
        Config(environ={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="cannot be read"):
        Config(environ={"CHATTERFIX_CONFIG": str(tmp_path / "missing.toml")})


def test_cli_reports_a_broken_config_file_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from chatterfix.cli import main

    (tmp_path / "chatterfix.toml").write_text("port = = 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["info"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("Error: ")
