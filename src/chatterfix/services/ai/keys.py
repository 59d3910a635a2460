"""API keys: an explicit argument, else the platform's keys file, else the environment.

The keys file (``ai.keys_file``, by default ``<platform.data_dir>/ai-keys.json``) maps
provider names to keys. It is written with mode 0600, through a temporary file renamed into
place, so that a reader never sees half a file. Keys travel inside :class:`Secret`, whose
``repr`` and ``str`` show ``********``: a key that ends up in a log line, a traceback's
locals or an error message by mistake still does not show.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from chatterfix.services.ai.errors import REDACTED

logger = logging.getLogger("chatterfix.ai")
KEYS_FILE_NAME = "ai-keys.json"


@attrs.frozen(repr=False)
class Secret:
    """A key. Only :meth:`reveal` gives its value."""

    _value: str = attrs.field(alias="value")

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{REDACTED}')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@attrs.frozen
class KeySource:
    """Where a provider's key comes from, for ``chatterfix keys list``: never the key."""

    provider: str
    env: str | None
    source: str | None  # "file", "env" or None (no key)


def keys_file_for(config: Any) -> Path:
    """The keys file a configuration names."""
    explicit = str(config.get("ai.keys_file") or "")
    if explicit:
        return Path(explicit).expanduser()
    return Path(str(config.get("platform.data_dir") or ".chatterfix")).expanduser() / KEYS_FILE_NAME


class KeyStore:
    """The keys file, read again only when it changes."""

    def __init__(self, path: Path, environ: Mapping[str, str] | None = None) -> None:
        self.path = path
        self._environ = environ
        self._signature: tuple[int, int, int] | None = None
        self._keys: dict[str, str] = {}
        self._warned = False

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def _load(self) -> dict[str, str]:
        try:
            info = self.path.stat()
        except OSError:
            self._signature, self._keys = None, {}
            return self._keys
        signature = (info.st_mtime_ns, info.st_size, info.st_ino)
        if signature == self._signature:
            return self._keys
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and not self._warned:
            self._warned = True
            logger.warning(
                "the AI keys file %s can be read by other users; run `chmod 600` on it",
                self.path,
            )
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError) as exc:
            # The error text of json names positions, never content.
            logger.warning("the AI keys file %s cannot be read: %s", self.path, type(exc).__name__)
            data = {}
        self._keys = {
            str(name): value
            for name, value in (data if isinstance(data, dict) else {}).items()
            if isinstance(value, str) and value
        }
        self._signature = signature
        return self._keys

    def stored(self) -> dict[str, str]:
        return dict(self._load())

    def resolve(self, provider: str, env: str | None, explicit: str | None = None) -> Secret | None:
        """The key for ``provider``: ``explicit``, else the file's, else ``$env``."""
        if explicit:
            return Secret(explicit)
        value = self._load().get(provider)
        if value:
            return Secret(value)
        if env:
            value = self.environ.get(env, "")
            if value:
                return Secret(value)
        return None

    def source(self, provider: str, env: str | None) -> KeySource:
        if self._load().get(provider):
            where: str | None = "file"
        elif env and self.environ.get(env):
            where = "env"
        else:
            where = None
        return KeySource(provider, env, where)

    def set(self, provider: str, key: str) -> None:
        if not provider or not key:
            raise ValueError("a provider name and a non-empty key are required")
        keys = self.stored()
        keys[provider] = key
        self._write(keys)

    def remove(self, provider: str) -> bool:
        keys = self.stored()
        if provider not in keys:
            return False
        del keys[provider]
        self._write(keys)
        return True

    def _write(self, keys: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".ai-keys-", dir=self.path.parent)
        try:
            os.fchmod(handle, 0o600)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(keys, out, indent=2, sort_keys=True)
                out.write("\n")
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._signature = None
