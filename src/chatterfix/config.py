"""Layered configuration.

Layers, lowest first: built-in defaults, plugin schema defaults, ``chatterfix.toml``, the
environment (``CHATTERFIX_`` prefix, ``__`` for nesting), configuration passed in code, and
values set at runtime. ``get`` returns the value from the highest layer that has the key.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "CHATTERFIX_"
CONFIG_FILE_NAME = "chatterfix.toml"
LAYERS = ("defaults", "schema", "file", "env", "code", "runtime")

DEFAULTS: dict[str, Any] = {
    "platform": {
        "name": "ChatterFix AI Development Platform",
        "debug": False,
        "data_dir": ".chatterfix",
    },
    "gateway": {"host": "127.0.0.1", "port": 8000, "access_log": True},
    "plugins": {
        "disabled": [],
        "only": [],
        "strict": False,
        "dir": None,
        "health_timeout": 5.0,
        "drain_timeout": 10.0,
    },
    "events": {
        "history_size": 1000,
        "retry_attempts": 3,
        "retry_backoff": 0.01,
        "max_payload_bytes": 262144,
        "backend": "memory",
        "stream": "chatterfix:events",
        "group": "",
        "claim_idle": 30.0,
    },
    "logging": {"level": "INFO"},
    "database": {"url": "", "pool_size": 5},
}

# Names that read better than their nested spelling; they take precedence over it.
ENV_ALIASES = {
    "CHATTERFIX_DEBUG": "platform.debug",
    "CHATTERFIX_DISABLE_PLUGINS": "plugins.disabled",
    "CHATTERFIX_ONLY_PLUGINS": "plugins.only",
    "CHATTERFIX_STRICT_PLUGINS": "plugins.strict",
    "CHATTERFIX_PLUGINS_DIR": "plugins.dir",
    "CHATTERFIX_DATA_DIR": "platform.data_dir",
}
NOT_CONFIG = {"CHATTERFIX_CONFIG", "CHATTERFIX_NO_PLUGIN_COMMANDS"}
SECRET_MARKERS = ("password", "passwd", "secret", "token", "api_key", "apikey", "private_key")

Watcher = Callable[[str, Any], Any]


class ConfigError(ValueError):
    """A configuration value or file that cannot be used."""


def env_flag(value: str | None) -> bool:
    """An on/off environment variable: unset, empty, 0, false, no and off mean off."""
    return (value or "").strip().lower() not in {"", "0", "false", "no", "off"}


def parse_env_value(key: str, raw: str) -> Any:
    """Turn an environment string into a value of the kind the key's default has.

    Booleans take on/off words, lists take JSON or comma-separated names, numbers take
    numbers; keys without a default take JSON numbers, booleans, lists and objects, and
    anything else stays the string it is (``null`` and ``"2024"``-like names included).
    """
    default = _get_path(DEFAULTS, key)
    if isinstance(default, bool):
        return env_flag(raw)
    if isinstance(default, list) and not raw.lstrip().startswith("["):
        return [item.strip() for item in raw.split(",") if item.strip()]
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(default, str) or value is None or isinstance(value, str):
        return raw
    return value


def env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    names = [name for name in environ if name.startswith(ENV_PREFIX) and name not in NOT_CONFIG]
    # Aliases last, so that they win over the nested spelling of the same key.
    for name in sorted(names, key=lambda name: name in ENV_ALIASES):
        key = ENV_ALIASES.get(name) or name[len(ENV_PREFIX) :].lower().replace("__", ".")
        _set_path(layer, key, parse_env_value(key, environ[name]))
    return layer


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None


def find_config_file(environ: Mapping[str, str], cwd: Path) -> Path | None:
    explicit = environ.get("CHATTERFIX_CONFIG")
    if explicit:
        return Path(explicit)
    candidate = cwd / CONFIG_FILE_NAME
    return candidate if candidate.is_file() else None


def _set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        child = tree.get(part)
        if not isinstance(child, dict):
            child = tree[part] = {}
        tree = child
    tree[leaf] = value


_MISSING = object()


def _get_path(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, path + ".")
        else:
            yield path, value


def is_secret(key: str) -> bool:
    """Whether a key holds a secret, judged by its last part (``ai.openai.api_key``)."""
    words = key.rsplit(".", 1)[-1].lower().replace("-", "_").split("_")
    name = "_".join(words)
    return any(marker in words or name.endswith(marker) for marker in SECRET_MARKERS)


class Config:
    """The platform's configuration: ``get``, ``set``, ``watch`` over named layers."""

    def __init__(
        self,
        code: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.file_path = config_file or find_config_file(environ, cwd or Path.cwd())
        self._layers: dict[str, dict[str, Any]] = {
            "defaults": copy.deepcopy(DEFAULTS),
            "schema": {},
            "file": load_config_file(self.file_path) if self.file_path else {},
            "env": env_layer(environ),
            "code": _merge({}, code or {}),
            "runtime": {},
        }
        self._watchers: dict[str, list[Watcher]] = {}
        self._cache: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        # Handlers read config on every request: leaf values are memoised until a change.
        value = self._cache.get(key, _MISSING)
        if value is not _MISSING:
            return value
        for layer in reversed(LAYERS):
            value = _get_path(self._layers[layer], key)
            if value is not _MISSING:
                if isinstance(value, Mapping):
                    return self._merged_subtree(key)
                self._cache[key] = value
                return value
        return default

    def layered(self, key: str) -> list[tuple[str, Any]]:
        """``(layer, value)`` for every layer that sets ``key``, lowest first."""
        found = [(layer, _get_path(self._layers[layer], key)) for layer in LAYERS]
        return [(layer, value) for layer, value in found if value is not _MISSING]

    def source(self, key: str) -> str | None:
        """Name of the layer the effective value of ``key`` comes from."""
        for layer in reversed(LAYERS):
            if _get_path(self._layers[layer], key) is not _MISSING:
                return layer
        return None

    def set(self, key: str, value: Any) -> None:
        old = self.get(key)
        _set_path(self._layers["runtime"], key, value)
        self._cache.clear()
        if old != value:
            self._notify(key, value)

    def watch(self, key: str, callback: Watcher) -> None:
        """Call ``callback(key, value)`` when ``key`` (or a key below it) changes."""
        self._watchers.setdefault(key, []).append(callback)

    def add_schema_defaults(self, prefix: str, schema: Mapping[str, Mapping[str, Any]]) -> None:
        for field, spec in schema.items():
            if "default" in spec:
                _set_path(self._layers["schema"], f"{prefix}.{field}", spec["default"])
        self._cache.clear()

    def as_dict(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for layer in LAYERS:
            _merge(merged, self._layers[layer])
        return merged

    def effective(self, *, redact: bool = True) -> dict[str, dict[str, Any]]:
        """Every leaf key with its value and source layer; secrets redacted."""
        return {
            key: {
                "value": "********" if redact and is_secret(key) and value else value,
                "source": self.source(key),
            }
            for key, value in _flatten(self.as_dict())
        }

    def _merged_subtree(self, key: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for layer in LAYERS:
            value = _get_path(self._layers[layer], key)
            if isinstance(value, Mapping):
                _merge(merged, value)
        return merged

    def _notify(self, key: str, value: Any) -> None:
        for watched, callbacks in self._watchers.items():
            if key == watched or key.startswith(watched + ".") or watched.startswith(key + "."):
                for callback in list(callbacks):
                    callback(key, value)
