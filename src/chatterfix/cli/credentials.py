"""The API token the command line sends to a gateway.

Taken from ``--token``, else ``CHATTERFIX_TOKEN``, else the token saved in
``<data_dir>/cli-token`` when the first ``chatterfix start`` created the administrator.
"""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_ENV = "CHATTERFIX_TOKEN"
TOKEN_FILE_NAME = "cli-token"


def token_file(data_dir: str | Path) -> Path:
    return Path(data_dir) / TOKEN_FILE_NAME


def save_token(data_dir: str | Path, token: str) -> Path:
    """Write ``token`` to the data folder, readable by this user only."""
    path = token_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    return path


def resolve_token(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    from chatterfix.config import Config

    path = token_file(str(Config().get("platform.data_dir")))
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
