"""Layered configuration: precedence, sources, environment coercion, watchers, redaction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chatterfix.config import Config, ConfigError

pytestmark = pytest.mark.anyio


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


# -- precedence, schema, validation ----------------------------------------------------------

SHOP_SCHEMA = {"size": {"type": "integer", "default": 1, "minimum": 1}}
LAYER_VALUES = {"schema": 1, "file": 2, "env": 3, "code": 4, "runtime": 5}


def _config_up_to(top: str, tmp_path: Path) -> Config:
    """A config where every layer up to ``top`` sets ``shop.size`` (to its own number)."""
    present = list(LAYER_VALUES)[: list(LAYER_VALUES).index(top) + 1]
    if "file" in present:
        (tmp_path / "chatterfix.toml").write_text("[shop]\nsize = 2\n")
    config = Config(
        {"shop": {"size": 4}} if "code" in present else None,
        environ={"CHATTERFIX_SHOP__SIZE": "3"} if "env" in present else {},
        cwd=tmp_path,
    )
    config.add_schema_defaults("shop", SHOP_SCHEMA)
    if "runtime" in present:
        config.set("shop.size", 5)
    return config


@pytest.mark.parametrize("top", list(LAYER_VALUES))
def test_every_layer_outranks_the_ones_below(top: str, tmp_path: Path) -> None:
    config = _config_up_to(top, tmp_path)
    assert (config.get("shop.size"), config.source("shop.size")) == (LAYER_VALUES[top], top)
    assert [layer for layer, _ in config.layered("shop.size")] == list(LAYER_VALUES)[
        : list(LAYER_VALUES).index(top) + 1
    ]


def test_debug_alias_and_defaults_layer() -> None:
    assert Config(environ={}).source("platform.debug") == "defaults"
    config = Config(environ={"CHATTERFIX_DEBUG": "true"})
    assert (config.get("platform.debug"), config.origin("platform.debug")) == (
        True,
        "environment variable CHATTERFIX_DEBUG",
    )


def test_environment_text_is_coerced_to_the_schema_type() -> None:
    config = Config(
        environ={
            "CHATTERFIX_GATEWAY__PORT": "8100",
            "CHATTERFIX_PLUGINS__HEALTH_TIMEOUT": "2.5",
            "CHATTERFIX_SHOP__OPEN": "true",
            "CHATTERFIX_SHOP__CODE": "123",
            "CHATTERFIX_SHOP__TAGS": "a, b",
            "CHATTERFIX_LOGGING__LEVEL": "debug",
        }
    )
    assert config.get("shop.code") == 123  # no schema yet: read as JSON
    config.add_schema_defaults(
        "shop",
        {
            "open": {"type": "boolean", "default": False},
            "code": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    )
    assert config.get("gateway.port") == 8100
    assert config.get("plugins.health_timeout") == 2.5
    assert config.get("shop.open") is True
    assert config.get("shop.code") == "123"  # the schema says text: read again as text
    assert config.get("shop.tags") == ["a", "b"]
    assert config.get("logging.level") == "DEBUG"


def test_file_values_are_coerced_where_unambiguous(tmp_path: Path) -> None:
    (tmp_path / "chatterfix.toml").write_text(
        '[events]\nhistory_size = 10.0\n[plugins]\ndisabled = "a, b"\n'
    )
    config = Config(environ={}, cwd=tmp_path)
    assert config.get("events.history_size") == 10
    assert isinstance(config.get("events.history_size"), int)
    assert config.get("plugins.disabled") == ["a", "b"]


def test_an_invalid_file_value_names_key_file_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "chatterfix.toml"
    path.write_text('[gateway]\nport = "abc"\n')
    with pytest.raises(ConfigError) as caught:
        Config(environ={}, cwd=tmp_path)
    assert str(caught.value) == (
        f"gateway.port = 'abc' from {path}: expected an integer between 1 and 65535"
    )
    problem = caught.value.problems[0]
    assert (problem.key, problem.origin) == ("gateway.port", str(path))


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"CHATTERFIX_GATEWAY__PORT": "abc"},
            "gateway.port = 'abc' from environment variable CHATTERFIX_GATEWAY__PORT: "
            "expected an integer between 1 and 65535",
        ),
        (
            {"CHATTERFIX_DEBUG": "maybe"},
            "platform.debug = 'maybe' from environment variable CHATTERFIX_DEBUG: "
            "expected true or false",
        ),
        (
            {"CHATTERFIX_LOGGING__LEVEL": "LOUD"},
            "logging.level = 'LOUD' from environment variable CHATTERFIX_LOGGING__LEVEL: "
            "expected one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'",
        ),
        (
            {"CHATTERFIX_PLUGINS__DRAIN_TIMEOUT": "-1"},
            "plugins.drain_timeout = -1 from environment variable "
            "CHATTERFIX_PLUGINS__DRAIN_TIMEOUT: expected a number >= 0",
        ),
    ],
)
def test_an_invalid_environment_value_names_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Config(environ=environ)
    assert str(caught.value) == message


def test_an_invalid_value_in_code_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        Config({"events": {"history_size": "many"}, "gateway": 5}, environ={})
    message = str(caught.value)
    assert (
        "events.history_size = 'many' from the configuration passed in code: "
        "expected an integer >= 0" in message
    )
    assert "gateway = 5 from the configuration passed in code: expected a table" in message


def test_an_invalid_runtime_set_raises_and_changes_nothing() -> None:
    config = Config(environ={})
    heard: list[Any] = []
    config.watch("gateway", lambda key, value: heard.append(value))
    with pytest.raises(ConfigError, match=r"gateway\.port = 0 from a runtime set: expected an"):
        config.set("gateway.port", 0)
    with pytest.raises(ConfigError, match="expected true or false"):
        config.set("gateway", {"port": 8100, "access_log": "sometimes"})
    assert (config.get("gateway.port"), config.source("gateway.port")) == (8000, "defaults")
    assert heard == []


def test_a_plugin_schema_checks_values_already_set(tmp_path: Path) -> None:
    path = tmp_path / "chatterfix.toml"
    path.write_text('[shop]\nsize = "big"\n')
    config = Config(environ={"CHATTERFIX_SHOP__SIZE": "0"}, cwd=tmp_path)
    assert config.layered("shop.size") == [("file", "big"), ("env", 0)]  # no schema yet
    with pytest.raises(ConfigError) as caught:
        config.add_schema_defaults("shop", SHOP_SCHEMA)
    assert str(caught.value) == (
        f"shop.size = 'big' from {path}: expected an integer >= 1; "
        "shop.size = 0 from environment variable CHATTERFIX_SHOP__SIZE: expected an integer >= 1"
    )
    assert config.source("shop.size") == "env"  # nothing of the schema was taken in
    assert config.spec("shop.size") is None


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"size": {"type": "integer", "default": "one"}},
            "shop.size = 'one' from the config_schema of plugin 'shop': expected an integer",
        ),
        (
            {"size": {"type": "int"}},
            "config_schema of plugin 'shop': entry 'size': unknown type 'int'; use one of "
            "string, integer, number, boolean, array, object, null",
        ),
        ({"size": "big"}, "config_schema of plugin 'shop': entry 'size': must be an object"),
        (
            {"key": {"type": "string", "required": True}},
            "shop.key is required by the config_schema of plugin 'shop' and not set: "
            "expected a string",
        ),
    ],
)
def test_a_bad_plugin_schema_is_reported(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config(environ={}).add_schema_defaults("shop", schema)
    assert str(caught.value).startswith(message)


def test_a_required_key_set_in_a_layer_is_enough() -> None:
    config = Config(environ={"CHATTERFIX_SHOP__KEY": "abc"})
    config.add_schema_defaults("shop", {"key": {"type": "string", "required": True}})
    assert config.get("shop.key") == "abc"


def test_a_new_schema_of_the_same_plugin_replaces_the_old_one() -> None:
    config = Config(environ={})
    config.add_schema_defaults("shop", {"size": {"type": "integer", "default": 1}})
    config.add_schema_defaults("shop", {"colour": {"type": "string", "default": "red"}})
    assert config.get("shop.size") is None
    assert config.spec("shop.size") is None
    config.set("shop.size", "any value now")
    assert config.get("shop.colour") == "red"


async def test_a_schema_violation_fails_only_that_plugin() -> None:
    from chatterfix import Platform, hookimpl
    from chatterfix.plugins import PluginState

    class Shop:
        PLUGIN_MANIFEST = {"name": "shop", "config_schema": {"size": {"type": "integer"}}}

    class Desk:
        PLUGIN_MANIFEST = {"name": "desk"}

        @hookimpl
        def config_schema(self) -> dict[str, Any]:
            return {"seats": {"type": "integer", "default": 4}}

    platform = Platform(
        config={"shop": {"size": "big"}},
        plugins=[Shop(), Desk()],
        load_entrypoints=False,
        builtins=False,
    )
    async with platform:
        shop, desk = platform.plugins.get("shop"), platform.plugins.get("desk")
        assert (shop.state, desk.state) == (PluginState.ERROR, PluginState.RUNNING)
        assert shop.error_message == (
            "config_schema failed: ConfigError: shop.size = 'big' from the configuration "
            "passed in code: expected an integer"
        )
        assert platform.config.get("desk.seats") == 4


def test_close_misspellings_of_built_in_keys_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "chatterfix.toml").write_text(
        "[gateway]\nprot = 9000\n[logging]\nbrand_new = 1\n[my_app]\nprot = 1\n"
    )
    with caplog.at_level("WARNING", logger="chatterfix.config"):
        config = Config(environ={"CHATTERFIX_PLUGINS__HEALTH_TIMOUT": "1"}, cwd=tmp_path)
    assert config.get("gateway.prot") == 9000  # unknown keys are kept
    warnings = [record.getMessage() for record in caplog.records]
    assert any(
        "unknown configuration key gateway.prot" in line and "did you mean gateway.port?" in line
        for line in warnings
    )
    assert any(
        "plugins.health_timout (from environment variable CHATTERFIX_PLUGINS__HEALTH_TIMOUT)"
        in line
        for line in warnings
    )
    assert not any("brand_new" in line or "my_app" in line for line in warnings)


# -- watchers ------------------------------------------------------------------------------


def test_watch_returns_an_unsubscribe_function_and_survives_a_failing_watcher() -> None:
    config = Config(environ={})
    heard: list[Any] = []

    def broken(key: str, value: Any) -> None:
        raise RuntimeError("watcher bug")

    config.watch("shop", broken)
    stop = config.watch("shop.size", lambda key, value: heard.append(value))
    config.set("shop.size", 2)
    stop()
    config.set("shop.size", 3)
    assert heard == [2]


def test_a_schema_default_arriving_is_a_change() -> None:
    config = Config(environ={})
    heard: list[tuple[str, Any]] = []
    config.watch("shop", lambda key, value: heard.append((key, value)))
    config.add_schema_defaults("shop", SHOP_SCHEMA)
    config.add_schema_defaults("shop", SHOP_SCHEMA)  # the same again: nothing changes
    assert heard == [("shop.size", 1)]


async def test_watchers_registered_by_a_plugin_go_when_it_stops() -> None:
    from chatterfix import Platform, hookimpl

    heard: list[Any] = []

    class Shop:
        PLUGIN_MANIFEST = {"name": "shop"}

        @hookimpl
        def startup(self, platform: Platform) -> None:
            platform.config.watch("shop.size", lambda key, value: heard.append(value))

    platform = Platform(plugins=[Shop()], load_entrypoints=False, builtins=False)
    async with platform:
        platform.config.set("shop.size", 1)
        await platform.plugins.stop_plugin("shop")
        platform.config.set("shop.size", 2)
        await platform.plugins.start_plugin("shop")
        platform.config.set("shop.size", 3)
    assert heard == [1, 3]


# -- the file, followed while running --------------------------------------------------------

FOLLOW_FAST = "[platform]\nwatch_interval = 0.02\n"


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (the file is polled in the background), at most 10 s."""
    import anyio

    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - state changed by the polling task
            await anyio.sleep(0.01)


def _platform_in(folder: Path) -> Any:
    from chatterfix import Platform

    return Platform(config=Config(cwd=folder), load_entrypoints=False, builtins=False)


async def test_file_changes_reach_watchers_while_running(tmp_path: Path) -> None:
    path = tmp_path / "chatterfix.toml"
    path.write_text(FOLLOW_FAST + "[shop]\nsize = 1\nname = 'a'\n")
    heard: list[tuple[str, Any]] = []
    async with _platform_in(tmp_path) as platform:
        platform.config.watch("shop", lambda key, value: heard.append((key, value)))
        path.write_text(FOLLOW_FAST + "[shop]\nsize = 2\nname = 'a'\ncolour = 'red'\n")
        await _until(lambda: len(heard) == 2)
        assert heard == [("shop.size", 2), ("shop.colour", "red")]
        assert (platform.config.get("shop.size"), platform.config.source("shop.size")) == (
            2,
            "file",
        )


async def test_an_invalid_file_change_keeps_the_previous_values(tmp_path: Path) -> None:
    path = tmp_path / "chatterfix.toml"
    path.write_text(FOLLOW_FAST + "[gateway]\nport = 9000\n[shop]\nsize = 1\n")
    heard: list[tuple[str, Any]] = []
    async with _platform_in(tmp_path) as platform:
        config = platform.config
        config.watch("shop", lambda key, value: heard.append((key, value)))
        path.write_text(FOLLOW_FAST + "[gateway]\nport = 'abc'\n[shop]\nsize = 5\n")
        await _until(lambda: config.file_error is not None)
        assert config.file_error == (
            f"gateway.port = 'abc' from {path}: expected an integer between 1 and 65535"
        )
        assert (config.get("gateway.port"), config.get("shop.size")) == (9000, 1)
        path.write_text(FOLLOW_FAST + "[gateway\n")
        await _until(lambda: "invalid TOML" in (config.file_error or ""))
        path.write_text(FOLLOW_FAST + "[gateway]\nport = 9001\n[shop]\nsize = 6\n")
        await _until(lambda: config.file_error is None)
        assert (config.get("gateway.port"), config.get("shop.size")) == (9001, 6)
    assert heard == [("shop.size", 6)]


async def test_a_file_created_or_removed_while_running_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATTERFIX_PLATFORM__WATCH_INTERVAL", "0.02")
    path = tmp_path / "chatterfix.toml"
    async with _platform_in(tmp_path) as platform:
        config = platform.config
        assert config.file_path is None
        path.write_text("[shop]\nsize = 7\n")
        await _until(lambda: config.get("shop.size") == 7)
        assert config.file_path == path
        path.unlink()
        await _until(lambda: config.get("shop.size") is None)
        assert config.file_path is None


async def test_a_plugin_schema_also_checks_a_reloaded_file(tmp_path: Path) -> None:
    from chatterfix import Platform

    class Shop:
        PLUGIN_MANIFEST = {"name": "shop", "config_schema": {"size": {"type": "integer"}}}

    path = tmp_path / "chatterfix.toml"
    path.write_text(FOLLOW_FAST + "[shop]\nsize = 1\n")
    platform = Platform(
        config=Config(cwd=tmp_path), plugins=[Shop()], load_entrypoints=False, builtins=False
    )
    async with platform:
        path.write_text(FOLLOW_FAST + "[shop]\nsize = 'big'\n")
        await _until(lambda: platform.config.file_error is not None)
        assert "shop.size = 'big' from" in platform.config.file_error
        assert platform.config.get("shop.size") == 1


async def test_following_the_file_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatterfix import Platform

    followed: list[float] = []

    async def record(self: Config, interval: float) -> None:
        followed.append(interval)

    monkeypatch.setattr(Config, "follow_file", record)
    for watch in (False, True):
        config = {"platform": {"watch_config": watch}}
        async with Platform(config=config, load_entrypoints=False, builtins=False):
            pass
    assert followed == [1.0]


# -- secrets -------------------------------------------------------------------------------


def test_schema_secrets_urls_and_numbers_in_effective() -> None:
    config = Config(
        {
            "shop": {"licence": "L-123", "token_ttl": 60},
            "database": {"url": "postgresql://app:s3cret@db:5432/cmms"},
        },
        environ={},
    )
    config.add_schema_defaults(
        "shop",
        {
            "licence": {"type": "string", "secret": True},
            "token_ttl": {"type": "integer", "default": 30},
        },
    )
    shown = config.effective()
    assert shown["shop.licence"] == {"value": "********", "source": "code"}
    assert shown["shop.token_ttl"]["value"] == 60  # a number is no secret, whatever its name
    assert shown["database.url"]["value"] == "postgresql://app:********@db:5432/cmms"
    assert config.effective(redact=False)["shop.licence"]["value"] == "L-123"


def test_error_messages_do_not_show_secret_values() -> None:
    config = Config(environ={"CHATTERFIX_SHOP__LICENCE": "12345"})
    with pytest.raises(ConfigError) as caught:
        config.add_schema_defaults("shop", {"licence": {"type": "boolean", "secret": True}})
    assert "12345" not in str(caught.value)
    assert "shop.licence = '********' from environment variable" in str(caught.value)
    with pytest.raises(ConfigError) as secret:
        Config({"shop": {"api_key": {"nested": 1}}}, environ={}).add_schema_defaults(
            "shop", {"api_key": {"type": "string"}}
        )
    assert "shop.api_key = '********' from the configuration passed in code" in str(secret.value)
