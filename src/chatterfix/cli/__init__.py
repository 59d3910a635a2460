"""The ``chatterfix`` command line.

Imports stay light here: each command imports what it needs when it runs, so that
``chatterfix --help`` never loads Starlette or SQLAlchemy.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import rich_click as click

from chatterfix import __version__
from chatterfix.cli.apps import create_app, templates, update_app
from chatterfix.cli.config_commands import config_group
from chatterfix.cli.keys import keys
from chatterfix.cli.users import users

click.rich_click.TEXT_MARKUP = "rich"  # markdown would import markdown-it: ~15 ms
click.rich_click.SHOW_ARGUMENTS = True
click.rich_click.COMMAND_GROUPS = {
    "chatterfix": [
        {"name": "Platform", "commands": ["start", "status", "plugin", "config"]},
        {"name": "Plugins", "commands": ["list", "hooks", "info"]},
        {"name": "Apps", "commands": ["create-app", "update-app", "templates"]},
    ]
}
DEFAULT_URL = "http://127.0.0.1:8000"


class PluginCommandsGroup(click.RichGroup):
    """The root group; commands from plugins' ``register_commands`` join when a name is not
    a built-in command. Listing (``--help``) never imports plugins: their code could pull in
    anything, and help must stay instant."""

    _plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from chatterfix.config import env_flag

        if env_flag(os.environ.get("CHATTERFIX_NO_PLUGIN_COMMANDS")):
            return
        from chatterfix.cli.plugin_commands import add_plugin_commands

        add_plugin_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._load_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command


@click.group(cls=PluginCommandsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True, help="Show debug logging.")
@click.version_option(__version__, "--version", prog_name="chatterfix")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """[bold]ChatterFix[/]: AI-powered CMMS apps as plugins, served through one gateway.

    Start the gateway with [cyan]chatterfix start[/], then open
    http://127.0.0.1:8000/platform/status. Plugins can add commands of their own:
    [cyan]chatterfix list[/] shows which; run them by name.
    """
    from chatterfix.config import Config
    from chatterfix.services.logging import configure_logging

    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    # Read here for its logging settings only: the command reads the configuration again
    # and reports any doubtful key then, once, through the handler configured here.
    config_logger = logging.getLogger("chatterfix.config")
    config_logger.disabled = True
    try:
        config = Config()
    finally:
        config_logger.disabled = False
    configure_logging(config, level="DEBUG" if verbose else None)
    if not verbose and "httpx" not in (config.get("logging.levels") or {}):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise


plugins_dir_option = click.option(
    "--plugins-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of plugins (each sub-folder holds plugin.json and its module).",
)


@cli.command()
@click.option("--host", default=None, help="Address to bind (config gateway.host; 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (config gateway.port; 8000).")
@click.option("--reload", is_flag=True, help="Restart when code changes (development).")
@plugins_dir_option
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="Log every request (config gateway.access_log; on).",
)
@click.pass_context
def start(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    reload: bool,
    plugins_dir: Path | None,
    access_log: bool | None,
) -> None:
    """Start the platform gateway (uvicorn) with every installed plugin."""
    from chatterfix.cli.serve import ServeOptions, serve

    serve(
        ServeOptions(
            host=host,
            port=port,
            reload=reload,
            plugins_dir=plugins_dir,
            access_log=access_log,
            verbose=ctx.obj["verbose"],
        )
    )


@cli.command()
@click.option("--url", default=DEFAULT_URL, show_default=True, help="Gateway to ask.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON document.")
def status(url: str, as_json: bool) -> None:
    """Ask a running gateway for its status."""
    from chatterfix.cli.reports import show_status

    show_status(url, as_json)


@cli.group()
def plugin() -> None:
    """Start, stop or reload a plugin in a running gateway."""


token_option = click.option(
    "--token",
    default=None,
    help="API token of an administrator (default: CHATTERFIX_TOKEN, else the token saved "
    "in the data folder by the first `chatterfix start`).",
)


def _plugin_action(action: str) -> click.Command:
    @click.argument("name")
    @click.option("--url", default=DEFAULT_URL, show_default=True, help="Gateway to ask.")
    @token_option
    def command(name: str, url: str, token: str | None) -> None:
        from chatterfix.cli.credentials import resolve_token
        from chatterfix.cli.reports import plugin_action

        plugin_action(url, name, action, resolve_token(token))

    command.__doc__ = f"{action.capitalize()} plugin NAME (POST /platform/plugins/NAME/{action})."
    return click.command(action)(command)


for _action in ("start", "stop", "reload"):
    plugin.add_command(_plugin_action(_action))


@cli.command("list")
@plugins_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_plugins(plugins_dir: Path | None, as_json: bool) -> None:
    """List installed plugins: version, state, origin, hooks, load errors."""
    from chatterfix.cli.reports import show_plugins

    show_plugins(plugins_dir, as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def hooks(as_json: bool) -> None:
    """List every hook a plugin can implement, with its signature."""
    from chatterfix.cli.reports import show_hooks

    show_hooks(as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(as_json: bool) -> None:
    """Show versions, configuration paths and where plugins are looked for."""
    from chatterfix.cli.reports import show_info

    show_info(as_json)


cli.add_command(config_group)


cli.add_command(users)


cli.add_command(keys)


for _command in (create_app, update_app, templates):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> Any:
    from chatterfix.config import ConfigError

    try:
        return cli.main(args=argv, prog_name="chatterfix", standalone_mode=True)
    except ConfigError as exc:  # a broken chatterfix.toml: say where, not a traceback
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
