"""``chatterfix start``: run the gateway under uvicorn."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import click
from rich.console import Console

PLUGINS_DIR_ENV = "CHATTERFIX_PLUGINS_DIR"
# Set from the command line so that --reload's worker process, which reads the configuration
# afresh, gets the same settings.
ACCESS_LOG_ENV = "CHATTERFIX_GATEWAY__ACCESS_LOG"
LOG_LEVEL_ENV = "CHATTERFIX_LOGGING__LEVEL"


def create_app() -> Any:
    """Factory used by ``--reload`` (uvicorn imports it again in each worker process)."""
    from chatterfix.config import Config
    from chatterfix.platform import Platform
    from chatterfix.services.logging import configure_logging

    config = Config()
    configure_logging(config)
    return Platform(config=config).asgi_app


@attrs.frozen(kw_only=True)
class ServeOptions:
    """What ``chatterfix start`` was asked for; ``None`` means "from configuration"."""

    host: str | None = None
    port: int | None = None
    reload: bool = False
    plugins_dir: Path | None = None
    access_log: bool | None = None
    verbose: bool = False


def serve(options: ServeOptions) -> None:
    import uvicorn

    from chatterfix.config import Config
    from chatterfix.platform import Platform
    from chatterfix.plugins import PluginLoadError
    from chatterfix.services.logging import configure_logging

    console = Console(stderr=True)
    if options.plugins_dir is not None:
        os.environ[PLUGINS_DIR_ENV] = str(options.plugins_dir.resolve())
    if options.access_log is not None:
        os.environ[ACCESS_LOG_ENV] = "true" if options.access_log else "false"
    if options.verbose and options.reload:
        os.environ[LOG_LEVEL_ENV] = "DEBUG"
    config = Config()
    configure_logging(config, level="DEBUG" if options.verbose else None)
    host = options.host if options.host is not None else str(config.get("gateway.host"))
    port = options.port if options.port is not None else int(config.get("gateway.port"))
    bootstrap_admin(config, console)
    settings: dict[str, Any] = {
        "host": host,
        "port": port,
        # uvicorn's records go through the platform's handler, at the platform's levels;
        # the gateway writes its own access log (gateway.access_log).
        "log_config": None,
        "log_level": None,
        "access_log": False,
        # On SIGTERM: stop accepting, let requests in flight finish for this long, then
        # stop the platform (plugins' shutdown, upstream pools) and exit 0.
        "timeout_graceful_shutdown": float(config.get("gateway.shutdown_grace")),
    }
    if options.reload:
        watched = [str(options.plugins_dir)] if options.plugins_dir else [os.getcwd()]
        with _clean_exit_on_sigterm():
            uvicorn.run(
                "chatterfix.cli.serve:create_app",
                factory=True,
                reload=True,
                reload_dirs=watched,
                **settings,
            )
        return
    try:
        platform = Platform(config=config)
    except PluginLoadError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    registry = platform.plugins
    console.print(
        f"[bold]ChatterFix[/bold] {platform.version}: {len(registry.records)} plugin(s), "
        f"{len(registry.load_errors)} load error(s); gateway on http://{host}:{port}"
    )
    with _clean_exit_on_sigterm():
        uvicorn.run(platform.asgi_app, lifespan="on", **settings)


@contextlib.contextmanager
def _clean_exit_on_sigterm() -> Iterator[None]:
    """Exit 0 after a graceful shutdown asked for by SIGTERM.

    uvicorn handles SIGTERM itself while it serves, then raises the signal again once it has
    shut down; without a handler of ours that would end the process with -15, which process
    managers (Kubernetes, systemd) record as a failure.
    """
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def bootstrap_admin(config: Any, console: Console) -> None:
    """On a database without users, create the administrator and show its token once."""
    import anyio

    if not config.get("auth.enabled"):
        console.print(
            "[bold yellow]warning:[/] auth.enabled is off: anyone who can reach the gateway "
            "can manage it"
        )
        return
    try:
        issued = anyio.run(_create_first_admin, config)
    except Exception as exc:  # the gateway still serves; auth answers 503 until it can
        console.print(f"[bold red]error:[/] cannot prepare users in the database: {exc}")
        return
    if issued is None:
        return
    from chatterfix.cli.credentials import save_token

    saved = save_token(str(config.get("platform.data_dir")), issued.token)
    console.print(
        "Created the administrator [bold]admin[/]. Its API token, shown this once:\n\n"
        f"    {issued.token}\n\n"
        f"It is also saved for this machine's command line in {saved} (readable by you "
        "only). Send it as 'Authorization: Bearer <token>' to manage the platform."
    )


async def _create_first_admin(config: Any) -> Any:
    from chatterfix.services.auth import AuthService
    from chatterfix.services.database import database_for

    database = database_for(config)
    try:
        return await AuthService(lambda: database, config).bootstrap_admin()
    finally:
        await database.aclose()
