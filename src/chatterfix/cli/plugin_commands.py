"""Commands contributed by plugins through the ``register_commands`` hook."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from chatterfix.platform import Platform


def commands_by_plugin(platform: Platform) -> dict[str, dict[str, click.Command]]:
    """Each plugin's commands; a plugin whose hook fails is reported and skipped."""
    import anyio

    from chatterfix.hookcalls import call_impls
    from chatterfix.plugins import PluginState

    found: dict[str, dict[str, click.Command]] = {}
    for record in platform.plugins.records.values():
        impls = record.hookimpls.get("register_commands")
        if not impls or record.state in (PluginState.DISABLED, PluginState.ERROR):
            continue
        scratch = click.Group()
        try:
            # Like every hook call: the arguments it asks for, awaited if async.
            anyio.run(call_impls, record, impls, {"cli": scratch})
        except Exception as exc:
            print(
                f"warning: plugin {record.name!r}: register_commands failed: {exc}",
                file=sys.stderr,
            )
            continue
        found[record.name] = dict(scratch.commands)
    return found


def add_plugin_commands(group: click.Group) -> None:
    """Add every plugin's commands to ``group``; a name already taken is skipped."""
    from chatterfix.platform import Platform

    try:
        platform = Platform()
    except Exception as exc:  # strict mode or bad config: keep the built-in commands usable
        print(f"warning: plugins not loaded: {exc}", file=sys.stderr)
        return
    for plugin, commands in commands_by_plugin(platform).items():
        for name, command in commands.items():
            if name in group.commands:
                print(
                    f"warning: plugin {plugin!r}: command {name!r} is taken; skipped",
                    file=sys.stderr,
                )
                continue
            group.add_command(command, name)
