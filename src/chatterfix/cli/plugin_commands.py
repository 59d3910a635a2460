"""Commands contributed by plugins through the ``register_commands`` hook."""

from __future__ import annotations

import sys

import click


def add_plugin_commands(group: click.Group) -> None:
    """Let each plugin add commands; a plugin that fails is reported and skipped."""
    from chatterfix.platform import Platform

    try:
        platform = Platform()
    except Exception as exc:  # strict mode: report, keep the built-in commands usable
        print(f"warning: plugins not loaded: {exc}", file=sys.stderr)
        return
    builtin = set(group.commands)
    for record in platform.plugins.records.values():
        for impl in record.hookimpls.get("register_commands", ()):
            scratch = click.Group()
            try:
                impl.function(scratch)
            except Exception as exc:
                print(
                    f"warning: plugin {record.name!r}: register_commands failed: {exc}",
                    file=sys.stderr,
                )
                continue
            for name, command in scratch.commands.items():
                if name in builtin or name in group.commands:
                    print(
                        f"warning: plugin {record.name!r}: command {name!r} is taken; skipped",
                        file=sys.stderr,
                    )
                    continue
                group.add_command(command, name)
