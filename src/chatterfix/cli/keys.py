"""``chatterfix keys``: the AI providers' keys in the platform's keys file (mode 0600).

Light at import (click only), like every command module: the work happens when a command
runs. No command ever prints a key.
"""

from __future__ import annotations

import sys
from typing import Any

import rich_click as click


def _store() -> Any:
    from chatterfix.config import Config
    from chatterfix.services.ai.keys import KeyStore, keys_file_for

    return KeyStore(keys_file_for(Config()))


@click.group()
def keys() -> None:
    """Keys of AI providers (OpenAI, Anthropic, xAI, ...), kept in the data folder's
    ai-keys.json (mode 0600). A key given in code wins over this file, which wins over the
    provider's environment variable (OPENAI_API_KEY, ...)."""


@keys.command("set")
@click.argument("provider")
@click.option(
    "--stdin", "from_stdin", is_flag=True, help="Read the key from standard input (scripts)."
)
def set_key(provider: str, from_stdin: bool) -> None:
    """Store the key of PROVIDER (asked for without echo, or read from standard input)."""
    if from_stdin or not sys.stdin.isatty():
        key = sys.stdin.readline().strip()
    else:
        key = click.prompt(f"Key for {provider}", hide_input=True).strip()
    if not key:
        raise click.ClickException("no key given")
    store = _store()
    store.set(provider, key)
    click.echo(f"Stored the key of {provider} in {store.path}")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_keys(as_json: bool) -> None:
    """Show which providers have a key, and where it comes from (never the key)."""
    import json

    from chatterfix.config import Config
    from chatterfix.services.ai.catalog import BUILTIN_KEY_ENV, configured_key_env

    config = Config()
    store = _store()
    table = config.get("ai.providers")
    names = {name for name, env in BUILTIN_KEY_ENV.items() if env}
    names |= set(table) if isinstance(table, dict) else set()
    names |= set(store.stored())
    rows = []
    for name in sorted(names):
        settings = config.get(f"ai.providers.{name}")
        env = configured_key_env(name, settings if isinstance(settings, dict) else {})
        rows.append(store.source(name, env))
    if as_json:
        data = [{"provider": r.provider, "env": r.env, "source": r.source} for r in rows]
        click.echo(json.dumps({"keys_file": str(store.path), "providers": data}, indent=2))
        return
    click.echo(f"keys file: {store.path}")
    width = max(len(r.provider) for r in rows) if rows else 8
    for row in rows:
        where = {"file": "set (keys file)", "env": f"set (${row.env})"}.get(
            row.source or "", f"not set (${row.env})" if row.env else "not set"
        )
        click.echo(f"  {row.provider.ljust(width)}  {where}")


@keys.command("remove")
@click.argument("provider")
def remove_key(provider: str) -> None:
    """Remove the key of PROVIDER from the keys file."""
    store = _store()
    if not store.remove(provider):
        raise click.ClickException(f"no key for {provider!r} in {store.path}")
    click.echo(f"Removed the key of {provider} from {store.path}")
