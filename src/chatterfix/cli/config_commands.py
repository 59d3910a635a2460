"""``chatterfix config show|get|set``: the configuration from here, or from a running gateway.

Imports stay light: the platform and httpx are imported by the commands that use them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rich_click as click

if TYPE_CHECKING:
    from chatterfix.config import Config

URL_HELP = "Ask the gateway at this URL instead of reading the configuration here."


class InvalidValue(click.ClickException):
    """A value the schema refuses, or a configuration that cannot be read: status 2."""

    exit_code = 2


@click.group("config")
def config_group() -> None:
    """Show, read or change the configuration (chatterfix.toml, environment, defaults)."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--show-secrets", is_flag=True, help="Show secret values (never with --url).")
@click.option("--url", default=None, help=URL_HELP)
def show(as_json: bool, show_secrets: bool, url: str | None) -> None:
    """Every key with its effective value and the layer it comes from."""
    if url:
        data = _call(url, "GET", "/platform/config")
    else:
        config = _local_config()
        data = {
            "config": config.effective(redact=not show_secrets),
            "file": str(config.file_path) if config.file_path else None,
        }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _print_table(data)


@config_group.command("get")
@click.argument("key")
@click.option("--source", is_flag=True, help="Also print where the value comes from.")
@click.option("--show-secrets", is_flag=True, help="Show a secret value (never with --url).")
@click.option("--url", default=None, help=URL_HELP)
def get(key: str, source: bool, show_secrets: bool, url: str | None) -> None:
    """Print the effective value of KEY (JSON unless it is text); a table's name prints
    every key below it as a JSON object."""
    view = _call(url, "GET", f"/platform/config/{key}") if url else _local_view(key, show_secrets)
    if "config" in view:
        click.echo(json.dumps(_nested(key, view["config"]), indent=2))
        return
    click.echo(_text(view["value"]))
    if source:
        click.echo(f"source: {view['source']} ({view['origin']})")


@config_group.command("set")
@click.argument("key")
@click.argument("value")
@click.option(
    "--url",
    default=None,
    help="Set a runtime value in the gateway at this URL instead (lost when it restarts).",
)
@click.option(
    "--token",
    default=None,
    help="With --url: an administrator's API token (default: CHATTERFIX_TOKEN, else the "
    "token saved in the data folder by the first `chatterfix start`).",
)
def set_value(key: str, value: str, url: str | None, token: str | None) -> None:
    """Write KEY = VALUE to the configuration file (chatterfix.toml here, or the file named
    by CHATTERFIX_CONFIG); a running gateway applies the change when it sees the file change.

    VALUE is read as an environment variable would be: 8100 is a number for a number key,
    true/false for an on/off key, "a, b" a list for a list key.
    """
    if url:
        view = _call(url, "PUT", f"/platform/config/{key}", {"text": value}, token)
        click.echo(f"{key} = {_text(view['value'])} (runtime value of {url}; not saved)")
        return
    _write_value(key, value)


# -- local configuration -----------------------------------------------------------------


def _local_config() -> Config:
    from chatterfix.config import Config, ConfigError

    try:
        config = Config()
        _add_plugin_schemas(config)
    except ConfigError as exc:
        raise InvalidValue(str(exc)) from None
    return config


def _add_plugin_schemas(config: Config) -> None:
    """Add the plugins' schemas (defaults, secrets), as starting them would; a plugin whose
    schema refuses a value is reported and left out."""
    import anyio

    from chatterfix.platform import Platform
    from chatterfix.plugins import PluginLoadError, PluginState

    plugin_log = logging.getLogger("chatterfix.plugins")
    level = plugin_log.level
    plugin_log.setLevel(logging.CRITICAL)  # load errors belong to `chatterfix list`
    try:
        platform = Platform(config=config)
    except PluginLoadError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        plugin_log.setLevel(level)

    async def collect() -> None:
        for record in platform.plugins.records.values():
            if record.state is PluginState.DISABLED:
                continue
            try:
                schema = dict(record.manifest.config_schema)
                for extra in await platform.plugins.call(record, "config_schema"):
                    schema.update(extra or {})
                config.add_schema_defaults(record.name, schema)
            except Exception as exc:
                click.echo(f"warning: plugin {record.name!r}: {exc}", err=True)

    anyio.run(collect)


def _local_view(key: str, show_secrets: bool) -> dict[str, Any]:
    config = _local_config()
    effective = config.effective(redact=not show_secrets)
    if key in effective:
        return {**effective[key], "origin": config.origin(key)}
    below = {name: entry for name, entry in effective.items() if name.startswith(key + ".")}
    if not below:
        raise click.ClickException(f"no configuration key {key!r}")
    return {"config": below}


def _write_value(key: str, raw: str) -> None:
    import tomli_w

    from chatterfix.config import (
        BUILTIN_SPECS,
        ConfigError,
        check_tree,
        config_file_target,
        load_config_file,
        parse_env_value,
    )

    path = config_file_target(os.environ, Path.cwd())
    try:
        tree = load_config_file(path) if path.exists() else {}
        update = _put({}, key, parse_env_value(key, raw))
        value = _pick(check_tree(update, BUILTIN_SPECS, lambda _: "the command line"), key)
    except ConfigError as exc:
        raise InvalidValue(f"{exc}; {path} is unchanged") from None
    had_comments = path.exists() and "#" in path.read_text(encoding="utf-8")
    _replace_file(path, tomli_w.dumps(_put(tree, key, value)))
    click.echo(f"{key} = {_text(value)} written to {path}")
    if had_comments:
        click.echo("note: the file was rewritten; its comments were not kept")
    _report_overrides(key)


def _report_overrides(key: str) -> None:
    """Say when the new value is not the effective one here (the environment wins)."""
    from chatterfix.config import Config, ConfigError

    try:
        config = Config()
    except ConfigError as exc:
        click.echo(f"warning: the configuration still has a problem: {exc}", err=True)
        return
    if config.source(key) != "file":
        click.echo(f"note: {config.origin(key)} overrides it in this environment")


def _put(tree: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value
    return tree


def _pick(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def _replace_file(path: Path, text: str) -> None:
    """Write a new file beside the old one and rename it over it, so that a gateway
    following the file never reads half of it; the old file's permissions are kept."""
    import shutil  # not at module level: it pulls in the compression modules

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    if path.exists():
        shutil.copymode(path, temporary)
    os.replace(temporary, path)


# -- output and the gateway ----------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _nested(key: str, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, entry in entries.items():
        _put(tree, name[len(key) + 1 :], entry["value"])
    return tree


def _print_table(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table("key", "value", "source", title=escape(f"configuration file: {data['file']}"))
    for key, entry in data["config"].items():
        table.add_row(Text(key), Text(_text(entry["value"])), Text(str(entry["source"])))
    console = Console()
    console.print(table)
    if data.get("file_error"):
        console.print(Text(f"the file's last change was refused: {data['file_error']}", "red"))


def _call(
    url: str, method: str, path: str, body: Any = None, token: str | None = None
) -> dict[str, Any]:
    from chatterfix.cli.credentials import resolve_token
    from chatterfix.cli.remote import GatewayRefused, ask_gateway

    try:
        return ask_gateway(url, method, path, token=resolve_token(token), body=body)
    except GatewayRefused as refused:
        if refused.status == 422:
            raise InvalidValue(refused.reason) from None
        raise
