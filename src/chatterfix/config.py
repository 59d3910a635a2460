"""Layered configuration.

Layers, lowest first: built-in defaults, plugin schema defaults, ``chatterfix.toml``, the
environment (``CHATTERFIX_`` prefix, ``__`` for nesting), configuration passed in code, and
values set at runtime. ``get`` returns the value from the highest layer that has the key.

Every layer is checked against the schema when it is loaded or changed: built-in keys take
the type of their default (narrowed by :data:`BUILTIN_SCHEMA`), a plugin's keys the entries of
its ``config_schema`` (:mod:`chatterfix.config_schema`). Keys without a schema are free.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import logging
import os
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from chatterfix.config_schema import (
    Invalid,
    SchemaError,
    Spec,
    parse_untyped,
    spec_from,
)
from chatterfix.context import current_plugin_owner

ENV_PREFIX = "CHATTERFIX_"
CONFIG_FILE_NAME = "chatterfix.toml"
LAYERS = ("defaults", "schema", "file", "env", "code", "runtime")

DEFAULTS: dict[str, Any] = {
    "platform": {
        "name": "ChatterFix AI Development Platform",
        "debug": False,
        "data_dir": ".chatterfix",
        "watch_config": True,
        "watch_interval": 1.0,
    },
    "gateway": {
        "host": "127.0.0.1",
        "port": 8000,
        "access_log": True,
        "shutdown_grace": 30.0,
        "metrics": True,
        "middleware": ["body_limit", "cors", "rate_limit", "auth", "plugins"],
        "max_body_bytes": 16 * 1024 * 1024,
        "cors": {
            "allow_origins": [],
            "allow_origin_regex": "",
            "allow_methods": ["GET", "POST", "PUT", "PATCH", "DELETE"],
            "allow_headers": ["Authorization", "Content-Type", "X-Request-ID"],
            "allow_credentials": False,
            "expose_headers": [
                "X-Request-ID",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "RateLimit-Policy",
            ],
            "max_age": 600,
        },
        "rate_limit": {
            "requests": 0,
            "period": 1.0,
            "backend": "memory",
            "key_prefix": "chatterfix:ratelimit",
        },
    },
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
        "persist_history": False,
        "history_retention": 100_000,
        "history_retention_days": 0.0,
    },
    "logging": {"level": "INFO", "format": "auto", "levels": {}},
    "database": {"url": "", "pool_size": 5, "pool_pre_ping": False},
    "ai": {
        "default_provider": "local",
        "fallbacks": [],
        "timeout": 60.0,
        "retry_attempts": 3,
        "retry_backoff": 0.5,
        "retry_max_backoff": 30.0,
        "max_retry_after": 60.0,
        "record_size": 1000,
        "keys_file": "",
        "providers": {
            "openai": {"base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini"},
            "anthropic": {
                "base_url": "https://api.anthropic.com/v1",
                "model": "claude-3-5-sonnet-latest",
            },
            "xai": {"base_url": "https://api.x.ai/v1", "model": "grok-2-latest"},
        },
    },
    "auth": {
        "enabled": True,
        "token_cache_seconds": 10.0,
        "login_attempts": 5,
        "login_window": 300.0,
        "login_token_ttl": 43200.0,
    },
    "discovery": {
        "backend": "memory",
        "prefix": "chatterfix:discovery",
        "sync_interval": 1.0,
        "balancing": "round_robin",
        "balancing_by_service": {},
        "health_interval": 5.0,
        "health_timeout": 2.0,
        "health_retries": 2,
        "health_backoff": 0.2,
        "health_max_interval": 30.0,
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "eject_5xx": 5,
        "ejection_time": 5.0,
        "default_ttl": 0.0,
        "latency_window": 1024,
        "proxy": {
            "connect_timeout": 5.0,
            "read_timeout": 60.0,
            "max_connections": 512,
            "max_connections_per_host": 128,
            "keepalive_timeout": 4.0,
            "retry": True,
        },
    },
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

# What built-in keys accept beyond the type of their default.
BUILTIN_SCHEMA: dict[str, dict[str, Any]] = {
    "platform.watch_interval": {"minimum": 0.01},
    "gateway.port": {"minimum": 1, "maximum": 65535},
    "gateway.shutdown_grace": {"minimum": 0},
    "gateway.middleware": {
        "items": {"type": "string", "enum": ["body_limit", "cors", "rate_limit", "auth", "plugins"]}
    },
    "gateway.max_body_bytes": {"minimum": 0},
    "gateway.cors.allow_origins": {"items": {"type": "string"}},
    "gateway.cors.allow_methods": {"items": {"type": "string"}},
    "gateway.cors.allow_headers": {"items": {"type": "string"}},
    "gateway.cors.expose_headers": {"items": {"type": "string"}},
    "gateway.cors.max_age": {"minimum": 0},
    "gateway.rate_limit.requests": {"minimum": 0},
    "gateway.rate_limit.period": {"minimum": 0.001},
    "plugins.disabled": {"items": {"type": "string"}},
    "plugins.only": {"items": {"type": "string"}},
    "plugins.dir": {"type": ["string", "null"]},
    "plugins.health_timeout": {"minimum": 0},
    "plugins.drain_timeout": {"minimum": 0},
    "events.history_size": {"minimum": 0},
    "events.retry_attempts": {"minimum": 1},
    "events.retry_backoff": {"minimum": 0},
    "events.max_payload_bytes": {"minimum": 1},
    "events.claim_idle": {"minimum": 0},
    "events.history_retention": {"minimum": 0},
    "events.history_retention_days": {"minimum": 0},
    "logging.level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]},
    "database.pool_size": {"minimum": 1},
    "discovery.balancing": {"enum": ["round_robin", "least_connections", "weighted"]},
    "discovery.sync_interval": {"minimum": 0.01},
    "discovery.health_interval": {"minimum": 0.01},
    "discovery.health_timeout": {"minimum": 0.01},
    "discovery.health_retries": {"minimum": 0},
    "discovery.eject_5xx": {"minimum": 0},
    "discovery.latency_window": {"minimum": 1},
    "discovery.proxy.max_connections": {"minimum": 1},
    "discovery.proxy.max_connections_per_host": {"minimum": 0},
}
REDACTED = "********"

Watcher = Callable[[str, Any], Any]
logger = logging.getLogger("chatterfix.config")


@attrs.frozen
class Problem:
    """One value that does not fit its schema: which key, from where, what was expected."""

    key: str
    value: Any  # already redacted when the key holds a secret
    origin: str
    expected: str
    missing: bool = False

    def __str__(self) -> str:
        if self.missing:
            return f"{self.key} is required by {self.origin} and not set: expected {self.expected}"
        return f"{self.key} = {self.value!r} from {self.origin}: expected {self.expected}"


class ConfigError(ValueError):
    """A configuration value or file that cannot be used.

    ``problems`` lists the values at fault, when values are at fault (not a whole file).
    """

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> ConfigError:
        return cls("; ".join(str(problem) for problem in problems), problems)


def env_flag(value: str | None) -> bool:
    """An on/off environment variable: unset, empty, 0, false, no and off mean off."""
    return (value or "").strip().lower() not in {"", "0", "false", "no", "off"}


_MISSING: Any = object()


def _set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        child = tree.get(part)
        if not isinstance(child, dict):
            child = tree[part] = {}
        tree = child
    tree[leaf] = value


def _get_path(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _del_path(tree: dict[str, Any], key: str) -> None:
    parent, _, leaf = key.rpartition(".")
    node = _get_path(tree, parent) if parent else tree
    if isinstance(node, dict):
        node.pop(leaf, None)


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


def _builtin_specs() -> dict[str, Spec]:
    return {
        key: spec_from({"default": default, **BUILTIN_SCHEMA.get(key, {})})
        for key, default in _flatten(DEFAULTS)
    }


BUILTIN_SPECS = _builtin_specs()


def parse_env_value(key: str, raw: str) -> Any:
    """Turn an environment string into a value of the built-in type of ``key``.

    On/off words for booleans, JSON or comma-separated names for lists, numbers for numbers,
    text as it is for text; a key without a built-in schema takes a JSON number, boolean,
    list or object, and anything else stays the string it is (``null`` included).
    """
    spec = BUILTIN_SPECS.get(key)
    return spec.parse_text(raw) if spec is not None else parse_untyped(raw)


def env_variables(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{key: (variable, text)}`` for every configuration variable of ``environ``."""
    found: dict[str, tuple[str, str]] = {}
    names = [name for name in environ if name.startswith(ENV_PREFIX) and name not in NOT_CONFIG]
    # Aliases last, so that they win over the nested spelling of the same key.
    for name in sorted(names, key=lambda name: name in ENV_ALIASES):
        key = ENV_ALIASES.get(name) or name[len(ENV_PREFIX) :].lower().replace("__", ".")
        found[key] = (name, environ[name])
    return found


def env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for key, (_, raw) in env_variables(environ).items():
        _set_path(layer, key, parse_env_value(key, raw))
    return layer


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None


def find_config_file(environ: Mapping[str, str], cwd: Path) -> Path | None:
    explicit = environ.get("CHATTERFIX_CONFIG")
    if explicit:
        return Path(explicit)
    candidate = cwd / CONFIG_FILE_NAME
    return candidate if candidate.is_file() else None


def config_file_target(environ: Mapping[str, str], cwd: Path) -> Path:
    """The file configuration is read from, whether it exists yet or not."""
    explicit = environ.get("CHATTERFIX_CONFIG")
    return Path(explicit) if explicit else cwd / CONFIG_FILE_NAME


def file_signature(path: Path | None) -> tuple[int, int, int] | None:
    """What tells a changed file apart (also one replaced by an editor's rename)."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def is_secret(key: str) -> bool:
    """Whether a key holds a secret, judged by its last part (``ai.openai.api_key``)."""
    words = key.rsplit(".", 1)[-1].lower().replace("-", "_").split("_")
    name = "_".join(words)
    return any(marker in words or name.endswith(marker) for marker in SECRET_MARKERS)


def hide_url_password(value: str) -> str:
    """``postgresql://app:********@db/cmms`` for a URL with a password; other text as is."""
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urllib.parse.urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if not password:
        return value
    netloc = parts.netloc.replace(f":{password}@", f":{REDACTED}@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _is_section(key: str, specs: Mapping[str, Spec]) -> bool:
    prefix = key + "."
    return any(name.startswith(prefix) for name in specs)


def _leaves(
    tree: Mapping[str, Any], specs: Mapping[str, Spec], prefix: str = ""
) -> Iterator[tuple[str, Any]]:
    """Values to check: a key with a schema is one value even when it holds a table."""
    for name, value in tree.items():
        key = prefix + name
        if key not in specs and isinstance(value, Mapping) and value:
            yield from _leaves(value, specs, key + ".")
        else:
            yield key, value


def _fit(key: str, value: Any, specs: Mapping[str, Spec]) -> Any:
    spec = specs.get(key)
    if spec is not None:
        return spec.check(value)
    if not isinstance(value, Mapping) and _is_section(key, specs):
        raise Invalid("a table of settings")
    return value


def check_tree(
    tree: Mapping[str, Any],
    specs: Mapping[str, Spec],
    origin: Callable[[str], str],
    secret: Callable[[str], bool] = is_secret,
) -> dict[str, Any]:
    """A copy of ``tree`` with every value that has a schema checked and coerced;
    :class:`ConfigError` lists every value that does not fit, with ``origin(key)``."""
    result = copy.deepcopy(dict(tree))
    problems = []
    for key, value in list(_leaves(result, specs)):
        try:
            _set_path(result, key, _fit(key, value, specs))
        except Invalid as exc:
            shown = REDACTED if secret(key) and value else value
            problems.append(Problem(key, shown, origin(key), str(exc)))
    if problems:
        raise ConfigError.of(problems)
    return result


def unknown_key_hints(tree: Mapping[str, Any], specs: Mapping[str, Spec]) -> list[tuple[str, str]]:
    """``(key, suggestion)`` for keys under a built-in section that look like a typo of a
    known one. Keys without a close match are left alone: plugins may read their own."""
    hints = []
    for key, _ in _leaves(tree, specs):
        section, _, rest = key.partition(".")
        if key in specs or section not in DEFAULTS or not rest or _is_section(key, specs):
            continue
        known = {name.partition(".")[2]: name for name in specs if name.startswith(section + ".")}
        match = difflib.get_close_matches(rest, list(known), n=1)
        if match:
            hints.append((key, known[match[0]]))
    return hints


def _scalar_only(spec: Spec) -> bool:
    return bool(spec.types) and set(spec.types) <= {"integer", "number", "boolean", "null"}


def _unset(value: Any) -> bool:
    return value is _MISSING or value is None


def _same(old: Any, new: Any) -> bool:
    return type(old) is type(new) and old == new


@attrs.define(eq=False)
class _Watch:
    key: str
    callback: Watcher
    owner: object | None


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
        cwd = cwd or Path.cwd()
        self.file_path = config_file or find_config_file(environ, cwd)
        # Followed even when missing, so that a file created while running applies.
        self.watched_path = self.file_path or config_file_target(environ, cwd)
        self._specs: dict[str, Spec] = dict(BUILTIN_SPECS)
        self._env_vars = env_variables(environ)
        self._file_signature = file_signature(self.file_path)
        # Why the last change of the file was refused (None: it applied), for operators.
        self.file_error: str | None = None
        self._layers: dict[str, dict[str, Any]] = {
            "defaults": copy.deepcopy(DEFAULTS),
            "schema": {},
            "file": self._read_file(self.file_path) if self.file_path else {},
            "env": self._checked("env", self._env_tree()),
            "code": self._checked("code", _merge({}, code or {})),
            "runtime": {},
        }
        self._watches: list[_Watch] = []
        self._cache: dict[str, Any] = {}

    # -- reading ---------------------------------------------------------------------------

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

    def origin(self, key: str) -> str | None:
        """Where the effective value of ``key`` comes from, in words: the file's path, the
        environment variable's name, the plugin whose schema default it is."""
        layer = self.source(key)
        return None if layer is None else self._origin(layer, key)

    def spec(self, key: str) -> Spec | None:
        """The schema entry of ``key``, if it has one."""
        return self._specs.get(key)

    def as_dict(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for layer in LAYERS:
            _merge(merged, self._layers[layer])
        return merged

    def is_secret(self, key: str) -> bool:
        """Secret by name (:func:`is_secret`) or declared ``"secret": true`` in a schema,
        for the key itself or a table above it. The name does not count for a key whose
        schema allows only numbers or booleans (``auth.token_cache_seconds``)."""
        spec = self._specs.get(key)
        if is_secret(key) and not (spec is not None and _scalar_only(spec)):
            return True
        while key:
            spec = self._specs.get(key)
            if spec is not None and spec.secret:
                return True
            key = key.rpartition(".")[0]
        return False

    def shown(self, key: str, value: Any) -> Any:
        """``value`` as it may be shown: a secret as ``********``, a URL without password."""
        if self.is_secret(key):
            return REDACTED if value else value
        return hide_url_password(value) if isinstance(value, str) else value

    def effective(self, *, redact: bool = True) -> dict[str, dict[str, Any]]:
        """Every leaf key with its value and source layer; secrets redacted."""
        return {
            key: {
                "value": self.shown(key, value) if redact else value,
                "source": self.source(key),
            }
            for key, value in _flatten(self.as_dict())
        }

    def parse_text(self, key: str, raw: str) -> Any:
        """What ``raw`` (an environment variable's or a command-line argument's text) means
        for ``key``, by its schema; unchecked: :meth:`set` checks it."""
        spec = self._specs.get(key)
        return spec.parse_text(raw) if spec is not None else parse_untyped(raw)

    # -- changing --------------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` in the runtime layer. A value that does not fit the key's schema
        raises :class:`ConfigError` and changes nothing."""
        tree: dict[str, Any] = {}
        _set_path(tree, key, value)
        checked = _get_path(self._checked("runtime", tree), key)
        with self._changes():
            _set_path(self._layers["runtime"], key, checked)

    def watch(self, key: str, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(key, value)`` when the effective value of ``key`` (or of a key
        below it) changes, by :meth:`set`, a plugin's schema or a reloaded file.

        Returns a function that removes the watcher. A watcher registered while one of a
        plugin's hooks runs (``startup``, typically) belongs to that plugin: it is removed
        when the plugin stops.
        """
        entry = _Watch(key, callback, current_plugin_owner.get())
        self._watches.append(entry)

        def unwatch() -> None:
            if entry in self._watches:
                self._watches.remove(entry)

        return unwatch

    def unwatch_owner(self, owner: object) -> int:
        """Remove the watchers registered by ``owner`` (a plugin generation)."""
        kept = [entry for entry in self._watches if entry.owner is not owner]
        removed = len(self._watches) - len(kept)
        self._watches = kept
        return removed

    def add_schema_defaults(self, prefix: str, schema: Mapping[str, Any]) -> None:
        """Take in plugin ``prefix``'s schema (its earlier one, if any, is replaced): the
        defaults form its part of the schema layer, and the values higher layers already
        hold for its keys are checked. :class:`ConfigError` if any does not fit, or a
        required key has no value; then nothing changes."""
        specs = self._plugin_specs(prefix, schema)
        defaults, problems = self._schema_defaults(prefix, specs)
        updates, mismatches = self._recheck(specs)
        layers = {**self._layers, "schema": defaults}
        problems += mismatches + self._unset_required(specs, layers)
        if problems:
            raise ConfigError.of(problems)
        with self._changes():
            self._specs = {
                key: spec
                for key, spec in self._specs.items()
                if not key.startswith(prefix + ".") or key in BUILTIN_SPECS
            }
            self._specs.update(specs)
            _del_path(self._layers["schema"], prefix)
            _merge(self._layers["schema"], defaults)
            for (layer, key), value in updates.items():
                _set_path(self._layers[layer], key, value)

    def reload_file(self) -> list[str]:
        """Read the configuration file again (a missing one holds no values) and apply it;
        returns the keys whose effective value changed. :class:`ConfigError` if the file
        cannot be used; the previous values then stay."""
        path = self.watched_path
        self._file_signature = file_signature(path)
        tree = self._read_file(path) if self._file_signature is not None else {}
        problems = self._unset_required(self._specs, {**self._layers, "file": tree})
        if problems:
            raise ConfigError.of(problems)
        with self._changes() as changed:
            self._layers["file"] = tree
            self.file_path = path if self._file_signature is not None else None
        return changed

    async def follow_file(self, interval: float) -> None:
        """Reload the configuration file whenever it changes, until cancelled.

        Polls the file's modification time, size and inode every ``interval`` seconds: a
        cancelled sleep ends at once, and no thread or file-system notification is held.
        """
        import anyio

        while True:
            await anyio.sleep(interval)
            if file_signature(self.watched_path) != self._file_signature:
                self._reload_and_log()

    def _reload_and_log(self) -> None:
        try:
            changed = self.reload_file()
        except ConfigError as exc:
            self.file_error = str(exc)
            logger.error("%s; the configuration keeps its previous values", exc)
            return
        except Exception as exc:  # following the file must never end the platform
            self.file_error = f"{self.watched_path}: {type(exc).__name__}: {exc}"
            logger.exception("configuration file %s not reloaded", self.watched_path)
            return
        self.file_error = None
        if self.file_path is None:
            logger.warning(
                "configuration file %s is gone; its values no longer apply", self.watched_path
            )
        logger.info(
            "configuration file %s reloaded; changed: %s",
            self.watched_path,
            ", ".join(changed) or "nothing",
        )

    # -- internals -------------------------------------------------------------------------

    def _read_file(self, path: Path) -> dict[str, Any]:
        return self._checked("file", load_config_file(path))

    def _env_tree(self) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for key, (_, raw) in self._env_vars.items():
            _set_path(tree, key, self.parse_text(key, raw))
        return tree

    def _checked(self, layer: str, tree: Mapping[str, Any]) -> dict[str, Any]:
        checked = check_tree(
            tree, self._specs, lambda key: self._origin(layer, key), self.is_secret
        )
        for key, suggestion in unknown_key_hints(checked, self._specs):
            logger.warning(
                "unknown configuration key %s (from %s); did you mean %s?",
                key,
                self._origin(layer, key),
                suggestion,
            )
        return checked

    def _origin(self, layer: str, key: str) -> str:
        if layer == "file":
            return str(self.watched_path)
        if layer == "env":
            name = self._env_name(key)
            return f"environment variable {name}" if name else "the environment"
        if layer == "schema":
            return f"the config_schema of plugin {key.partition('.')[0]!r}"
        return {
            "defaults": "the built-in defaults",
            "code": "the configuration passed in code",
            "runtime": "a runtime set",
        }[layer]

    def _env_name(self, key: str) -> str | None:
        """The variable that set ``key``, or the one holding a JSON table around it."""
        while key:
            if key in self._env_vars:
                return self._env_vars[key][0]
            key = key.rpartition(".")[0]
        return None

    def _plugin_specs(self, prefix: str, schema: Mapping[str, Any]) -> dict[str, Spec]:
        specs = {}
        for field, entry in schema.items():
            try:
                specs[f"{prefix}.{field}"] = spec_from(entry)
            except SchemaError as exc:
                raise ConfigError(
                    f"config_schema of plugin {prefix!r}: entry {field!r}: {exc}"
                ) from None
        return specs

    def _schema_defaults(
        self, prefix: str, specs: Mapping[str, Spec]
    ) -> tuple[dict[str, Any], list[Problem]]:
        defaults: dict[str, Any] = {}
        problems = []
        for key, spec in specs.items():
            if not spec.has_default:
                continue
            try:
                # A null default means "no value yet", whatever the type.
                value = spec.default if spec.default is None else spec.check(spec.default)
            except Invalid as exc:
                shown = REDACTED if spec.secret or is_secret(key) else spec.default
                problems.append(Problem(key, shown, self._origin("schema", key), str(exc)))
            else:
                _set_path(defaults, key, value)
        return defaults, problems

    def _recheck(
        self, specs: Mapping[str, Spec]
    ) -> tuple[dict[tuple[str, str], Any], list[Problem]]:
        """Values above the schema layer for keys a plugin's schema now describes."""
        updates: dict[tuple[str, str], Any] = {}
        problems = []
        for layer in LAYERS[LAYERS.index("file") :]:
            for key, spec in specs.items():
                value = _get_path(self._layers[layer], key)
                if value is _MISSING:
                    continue
                if layer == "env" and key in self._env_vars:
                    value = spec.parse_text(self._env_vars[key][1])  # read for its real type
                try:
                    updates[layer, key] = spec.check(value)
                except Invalid as exc:
                    shown = REDACTED if (spec.secret or is_secret(key)) and value else value
                    problems.append(Problem(key, shown, self._origin(layer, key), str(exc)))
        return updates, problems

    def _unset_required(
        self, specs: Mapping[str, Spec], layers: Mapping[str, Mapping[str, Any]]
    ) -> list[Problem]:
        return [
            Problem(key, None, self._origin("schema", key), spec.expected(), missing=True)
            for key, spec in specs.items()
            if spec.required and all(_unset(_get_path(tree, key)) for tree in layers.values())
        ]

    @contextlib.contextmanager
    def _changes(self) -> Iterator[list[str]]:
        """Apply a change to the layers, then tell the watchers of every key whose
        effective value it changed (the list yielded is filled with those keys)."""
        before = dict(_flatten(self.as_dict()))
        changed: list[str] = []
        try:
            yield changed
        finally:
            self._cache.clear()
        after = dict(_flatten(self.as_dict()))
        for key in [*after, *(key for key in before if key not in after)]:
            if not _same(before.get(key, _MISSING), after.get(key, _MISSING)):
                changed.append(key)
        for key in changed:
            self._notify(key, after.get(key))

    def _merged_subtree(self, key: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for layer in LAYERS:
            value = _get_path(self._layers[layer], key)
            if isinstance(value, Mapping):
                _merge(merged, value)
        return merged

    def _notify(self, key: str, value: Any) -> None:
        for entry in list(self._watches):
            watched = entry.key
            if key == watched or key.startswith(watched + ".") or watched.startswith(key + "."):
                _call_watcher(entry, key, value)


def _call_watcher(entry: _Watch, key: str, value: Any) -> None:
    """One failing watcher must not keep the others from hearing of the change."""
    try:
        result = entry.callback(key, value)
    except Exception:
        logger.exception("configuration watcher %r of %s failed", entry.callback, entry.key)
        return
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        logger.warning(
            "configuration watcher %r of %s returned an awaitable, which is not awaited: "
            "watchers are plain functions",
            entry.callback,
            entry.key,
        )
