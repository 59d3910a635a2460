"""``chatterfix start``: run the gateway under uvicorn."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

PLUGINS_DIR_ENV = "CHATTERFIX_PLUGINS_DIR"


def create_app() -> Any:
    """Factory used by ``--reload`` (uvicorn imports it again in each worker process)."""
    from chatterfix.platform import Platform

    return Platform().asgi_app


def serve(
    *, host: str | None, port: int | None, reload: bool, plugins_dir: Path | None, verbose: bool
) -> None:
    import uvicorn

    from chatterfix.config import Config
    from chatterfix.platform import Platform
    from chatterfix.plugins import PluginLoadError

    console = Console(stderr=True)
    if plugins_dir is not None:
        os.environ[PLUGINS_DIR_ENV] = str(plugins_dir.resolve())
    config = Config()
    host = host if host is not None else str(config.get("gateway.host"))
    port = port if port is not None else int(config.get("gateway.port"))
    log_level = "debug" if verbose else "info"
    if reload:
        watched = [str(plugins_dir)] if plugins_dir else [os.getcwd()]
        uvicorn.run(
            "chatterfix.cli.serve:create_app",
            factory=True,
            host=host,
            port=port,
            reload=True,
            reload_dirs=watched,
            log_level=log_level,
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
    for error in registry.load_errors:
        console.print(f"  [yellow]load error[/yellow] {error.source}: {error.message}")
    uvicorn.run(platform.asgi_app, host=host, port=port, log_level=log_level, lifespan="on")
