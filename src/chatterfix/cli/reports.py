"""The reporting commands: status, list, hooks, info."""

from __future__ import annotations

import inspect
import json
import logging
import platform as host_platform
import re
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from chatterfix.cli.remote import ask_gateway

console = Console()


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def plugin_action(url: str, name: str, action: str, token: str | None) -> None:
    data = ask_gateway(url, "POST", f"/platform/plugins/{name}/{action}", token=token)
    for affected, state in data["plugins"].items():
        console.print(f"{affected}: [bold]{state}[/bold]")


def show_status(url: str, as_json: bool) -> None:
    data = ask_gateway(url, "GET", "/platform/status")
    if as_json:
        _print_json(data)
        return
    info = data["platform"]
    services = data["services"]
    console.print(
        f"[bold]{info['name']}[/bold] {info['version']} — up {info['uptime']:.0f}s — "
        f"availability {services['availability_percentage']}% "
        f"({services['healthy_services']}/{services['total_services']} healthy)"
    )
    table = Table("plugin", "status", "health", "last heartbeat", "error")
    for name, plugin in data["plugins"].items():
        colour = {"running": "green", "error": "red"}.get(plugin["status"], "yellow")
        table.add_row(
            name,
            f"[{colour}]{plugin['status']}[/{colour}]",
            plugin.get("health", ""),
            plugin.get("last_heartbeat") or "",
            plugin.get("error_message") or "",
        )
    console.print(table)


def show_plugins(plugins_dir: Path | None, as_json: bool) -> None:
    import attrs

    from chatterfix.platform import Platform
    from chatterfix.plugins import PluginLoadError

    plugin_log = logging.getLogger("chatterfix.plugins")
    level = plugin_log.level
    plugin_log.setLevel(logging.CRITICAL)  # load errors are in the table below
    try:
        platform = Platform(plugins_dir=plugins_dir)
    except PluginLoadError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        plugin_log.setLevel(level)
    from chatterfix.cli.plugin_commands import commands_by_plugin

    registry = platform.plugins
    commands = commands_by_plugin(platform)
    records = [
        {**record.summary(), "commands": sorted(commands.get(record.name, {}))}
        for record in registry.records.values()
    ]
    errors = [attrs.asdict(error) for error in registry.load_errors]
    if as_json:
        _print_json({"plugins": records, "load_errors": errors})
        return
    table = Table("name", "version", "state", "origin", "location", "hooks")
    for record in records:
        note = f"\n[red]{record['error_message']}[/red]" if record["error_message"] else ""
        for warning in record["warnings"]:
            note += f"\n[yellow]{warning}[/yellow]"
        if record["commands"]:
            note += "\ncommands: " + ", ".join(record["commands"])
        table.add_row(
            record["name"],
            record["version"],
            record["status"] + note,
            record["origin"],
            record["location"],
            ", ".join(record["hooks"]),
        )
    console.print(table)
    if errors:
        console.print(f"[red]{len(errors)} plugin(s) failed to load:[/red]")
        for error in errors:
            where = "" if error["source"] in error["message"] else f" {error['source']}:"
            console.print(f"  [bold]{error['name']}[/bold]{where} {error['message']}")


def hook_reference() -> list[dict[str, str]]:
    from chatterfix import hookspecs
    from chatterfix.hookcalls import hookspecs_names

    rows = []
    for name in hookspecs_names():
        function = getattr(hookspecs, name)
        doc = inspect.getdoc(function) or ""
        parameters = ", ".join(inspect.signature(function).parameters)
        summary = _plain(doc.split("\n")[0])
        rows.append({"name": name, "signature": f"{name}({parameters})", "summary": summary})
    return rows


def _plain(text: str) -> str:
    """Docstring markup (``code``, :func:`name`) as plain text for the terminal."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def show_hooks(as_json: bool) -> None:
    rows = hook_reference()
    if as_json:
        _print_json(rows)
        return
    table = Table("hook", "summary")
    for row in rows:
        table.add_row(row["signature"], row["summary"])
    console.print(table)


def show_info(as_json: bool) -> None:
    import importlib.metadata

    from chatterfix import __version__
    from chatterfix.config import Config
    from chatterfix.plugin_sources import ENTRY_POINT_GROUP

    config = Config()
    entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    data = {
        "chatterfix": __version__,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "system": host_platform.platform(),
        "config_file": str(config.file_path) if config.file_path else None,
        "config_file_looked_for": str(Path.cwd() / "chatterfix.toml"),
        "data_dir": str(Path(str(config.get("platform.data_dir"))).resolve()),
        "plugins_dir": config.get("plugins.dir"),
        "entry_point_group": ENTRY_POINT_GROUP,
        "entry_points": sorted(f"{ep.name} = {ep.value}" for ep in entry_points),
        "gateway": f"http://{config.get('gateway.host')}:{config.get('gateway.port')}",
    }
    if as_json:
        _print_json(data)
        return
    table = Table("setting", "value", show_header=False)
    for key, value in data.items():
        table.add_row(key, "\n".join(value) if isinstance(value, list) else str(value))
    console.print(table)
