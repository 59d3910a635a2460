"""Structured logging: every record says which request, which chain of events and which plugin
it belongs to, and comes out as one JSON object per line or as a readable console line.

:class:`ContextFilter` adds ``request_id``, ``correlation_id`` and ``plugin`` to each record
from context variables, so nothing has to be passed around; :func:`configure_logging` puts
one handler with that filter on the root logger and sets levels from the configuration.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from chatterfix.config import Config, ConfigError
from chatterfix.context import (
    current_event,
    current_plugin_owner,
    current_request_id,
    current_scope,
    serving_routing,
)

ACCESS_LOGGER = "chatterfix.gateway.access"
PLUGIN_LOGGER_PREFIX = "chatterfix.plugins."
# Loggers of the platform's own components (some created only when first used).
PLATFORM_LOGGERS = frozenset(
    f"chatterfix.{part}"
    for part in ("platform", "gateway", "events", "config", "database", "auth", "cli")
)
FORMATS = ("auto", "json", "console")
CONTEXT_FIELDS = ("request_id", "correlation_id", "plugin")
LEVEL_NAMES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Everything a LogRecord carries by itself; any other attribute came from ``extra=``.
# ``color_message`` is uvicorn's coloured copy of its message, not information of its own.
_RECORD_ATTRIBUTES = frozenset(
    [
        *logging.makeLogRecord({}).__dict__,
        "message",
        "asctime",
        "taskName",
        "color_message",
        *CONTEXT_FIELDS,
    ]
)
_OWN_ATTRIBUTES = len(logging.LogRecord("", 0, "", 0, "", None, None).__dict__)
# Fields the access log's message already spells out: the console does not repeat them.
_IN_MESSAGE = {ACCESS_LOGGER: frozenset({"method", "path", "status", "duration_ms"})}

# -- which plugin a record belongs to --------------------------------------------------------

# Loggers obtained through ``Platform.get_logger`` while a plugin's code was running.
_plugin_loggers: dict[str, str] = {}
# Logger name -> plugin (or None), worked out once per name.
_logger_plugin_cache: dict[str, str | None] = {}


def _owner_name(owner: object) -> str | None:
    # The owner is a plugin generation (a PluginRecord), or the candidate being imported:
    # both carry the plugin's name.
    name = getattr(owner, "name", None)
    return name if isinstance(name, str) else None


def attribute_logger(logger_name: str) -> None:
    """Attribute a logger about to be created (and the loggers below it) to the plugin whose
    code is running, if any: its records then name that plugin even when emitted outside
    plugin code, from a thread of the plugin's own for instance.

    Loggers that exist already, and the platform's own, are left alone: a plugin asking
    for ``database`` must not make the platform's database records its own.
    """
    owner = current_plugin_owner.get()
    plugin = _owner_name(owner) if owner is not None else None
    if plugin is None or _plugin_loggers.get(logger_name) == plugin:
        return
    if isinstance(logging.Logger.manager.loggerDict.get(logger_name), logging.Logger):
        return
    component = ".".join(logger_name.split(".", 2)[:2])
    if logger_name in ("chatterfix", "chatterfix.plugins") or component in PLATFORM_LOGGERS:
        return
    _plugin_loggers[logger_name] = plugin
    _logger_plugin_cache.clear()


def plugin_of_logger(logger_name: str) -> str | None:
    """The plugin a logger belongs to by its name: ``chatterfix.plugins.<name>`` and below,
    or a logger (or a child of one) attributed by :func:`attribute_logger`."""
    try:
        return _logger_plugin_cache[logger_name]
    except KeyError:
        pass
    found: str | None = None
    probe = logger_name
    while probe:
        found = _plugin_loggers.get(probe)
        if found is not None:
            break
        probe = probe.rpartition(".")[0]
    if found is None and logger_name.startswith(PLUGIN_LOGGER_PREFIX):
        found = logger_name[len(PLUGIN_LOGGER_PREFIX) :].partition(".")[0] or None
    if len(_logger_plugin_cache) < 10_000:  # logger names are few; never grow without bound
        _logger_plugin_cache[logger_name] = found
    return found


def running_plugin() -> str | None:
    """The plugin whose code is running: the owner of the hook or event handler being
    called, else the plugin owning the route the current gateway request was routed to."""
    owner = current_plugin_owner.get()
    if owner is not None:
        name = _owner_name(owner)
        if name is not None:
            return name
    scope = current_scope.get()
    if scope is None:
        return None
    route = scope.get("route")
    if route is None:  # not routed (yet): platform middleware, or no route matched
        return None
    owners: Mapping[int, str] | None = getattr(serving_routing.get(), "route_plugins", None)
    return owners.get(id(route)) if owners else None


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``correlation_id`` and ``plugin`` to every record it sees.

    ``correlation_id`` is the id an event emitted at this point would carry: that of the
    event being handled, else the gateway request's id. Values given with ``extra=`` are
    kept. Attach it to a handler (as :func:`configure_logging` does), so that records from
    every logger, the standard library's and third parties' included, get the fields.
    """

    # A filter rather than a LogRecord factory: both cost about 0.5 us a record, and a
    # filter touches only the records its handler writes, not process-wide state that other
    # libraries (and test runners) replace too.

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if "request_id" not in fields:
            fields["request_id"] = current_request_id.get()
        if "correlation_id" not in fields:
            event = current_event.get()
            fields["correlation_id"] = (
                event.correlation_id if event is not None else None
            ) or fields["request_id"]
        if "plugin" not in fields:
            plugin = running_plugin()
            fields["plugin"] = plugin if plugin is not None else plugin_of_logger(record.name)
        return True


def _extras(record: logging.LogRecord) -> list[tuple[str, Any]]:
    # A record's own attributes come first in its __dict__ (LogRecord.__init__ sets them):
    # skipping them unexamined halves the cost of finding the few extra ones.
    later = itertools.islice(record.__dict__.items(), _OWN_ATTRIBUTES, None)
    return [item for item in later if item[0] not in _RECORD_ATTRIBUTES]


# -- formatters ------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, ``request_id``, ``correlation_id``, ``plugin``, then the ``extra=`` fields,
    and ``exception`` / ``stack`` when present. Values JSON cannot hold are written as text.
    """

    def __init__(self) -> None:
        super().__init__()
        # json.dumps with options builds a new encoder on every call: build it once.
        self._encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once per second, not once per record
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        data: dict[str, Any] = {
            "ts": self._timestamp(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": fields.get("request_id"),
            "correlation_id": fields.get("correlation_id"),
            "plugin": fields.get("plugin"),
        }
        for key, value in _extras(record):
            data.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        try:
            return self._encode(data)
        except (TypeError, ValueError):  # non-text keys, circular structures: keep the record
            return self._encode({key: self._encodable(value) for key, value in data.items()})

    def _encodable(self, value: Any) -> Any:
        try:
            self._encode(value)
        except (TypeError, ValueError):
            return str(value)
        return value


LEVEL_STYLES = {
    "DEBUG": "dim",
    "INFO": "green",
    "WARNING": "yellow",
    "ERROR": "bold red",
    "CRITICAL": "bold white on red",
}


class ConsoleFormatter(logging.Formatter):
    """A readable line per record: local time, level, logger, message, then ``key=value``
    for the plugin, the ids and the ``extra=`` fields; coloured with ``rich`` styles when
    ``color`` is true. A traceback follows on its own lines."""

    def __init__(self, *, color: bool = False) -> None:
        super().__init__()
        self.color = color
        if color:
            from rich.color import ColorSystem
            from rich.style import Style

            # Rendering styles straight to escape codes, without a rich Console, keeps a
            # record to a few microseconds.
            self._system = ColorSystem.STANDARD
            self._parse_style = Style.parse

    def _paint(self, text: str, style: str) -> str:
        if not self.color:
            return text
        rendered: str = self._parse_style(style).render(text, color_system=self._system)
        return rendered

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = record.levelname
        parts = [
            self._paint(f"{clock}.{int(record.msecs):03d}", "dim"),
            self._paint(f"{level:<8}", LEVEL_STYLES.get(level, "")),
            self._paint(record.name, "cyan"),
            record.getMessage(),
        ]
        context = []
        plugin = fields.get("plugin")
        if plugin:
            context.append(f"plugin={plugin}")
        request_id = fields.get("request_id")
        if request_id:
            context.append(f"request_id={request_id}")
        correlation_id = fields.get("correlation_id")
        if correlation_id and correlation_id != request_id:
            context.append(f"correlation_id={correlation_id}")
        skip = _IN_MESSAGE.get(record.name, frozenset())
        context.extend(f"{key}={value}" for key, value in _extras(record) if key not in skip)
        line = " ".join(parts)
        if context:
            # After the message's first line: a message may carry a traceback of its own.
            first, newline, rest = line.partition("\n")
            line = f"{first}  {self._paint(' '.join(context), 'dim')}{newline}{rest}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + self._paint(record.exc_text, "red")
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


# -- configuration ---------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of each record, so that replacing
    it later (a test runner capturing output) never leaves records going to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


# Marks the handler configure_logging installed, so that configuring again replaces it.
_OURS = "_chatterfix_logging"
# Loggers whose level configure_logging set from ``logging.levels``, to undo on the next call.
_levelled: set[str] = set()


def _level(value: Any, key: str, config: Config) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        number = logging.getLevelNamesMapping().get(value.strip().upper())
        if number is not None:
            return number
    raise ConfigError(
        f"{key} = {value!r} (from {config.source(key.partition('[')[0])}): "
        f"expected a level name ({', '.join(LEVEL_NAMES)})"
    )


def _flatten_levels(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    # In TOML an unquoted dotted key (``chatterfix.gateway.access = "WARNING"``) is a nested
    # table: it means the same logger as the quoted one.
    for name, value in table.items():
        if isinstance(value, Mapping):
            yield from _flatten_levels(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def configure_logging(
    config: Config | Mapping[str, Any] | None = None,
    *,
    stream: TextIO | None = None,
    force_json: bool | None = None,
    level: str | int | None = None,
) -> logging.Handler:
    """Send every logger's records through one handler on the root logger, and set levels.

    Reads ``logging.level`` (the root level), ``logging.levels`` (logger name -> level) and
    ``logging.format`` (``auto``: console on a terminal, JSON lines otherwise; ``json``;
    ``console``). ``stream`` defaults to standard error; ``force_json`` overrides the format;
    ``level`` overrides ``logging.level`` (the command line's ``-v``). Calling it again
    replaces the handler and the levels it set, so it never duplicates output. Invalid
    values raise :class:`~chatterfix.config.ConfigError` naming the key, before anything
    changes. Returns the handler.
    """
    if not isinstance(config, Config):
        config = Config(config)
    root_level = _level(
        config.get("logging.level") if level is None else level, "logging.level", config
    )
    table = config.get("logging.levels") or {}
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"logging.levels = {table!r} (from {config.source('logging.levels')}): "
            "expected a table of logger name = level"
        )
    levels = {
        name: _level(value, f"logging.levels[{name!r}]", config)
        for name, value in _flatten_levels(table)
    }
    output = str(config.get("logging.format") or "auto").strip().lower()
    if output not in FORMATS:
        raise ConfigError(
            f"logging.format = {config.get('logging.format')!r} "
            f"(from {config.source('logging.format')}): expected one of {', '.join(FORMATS)}"
        )

    handler: logging.StreamHandler[TextIO] = (
        _StderrHandler() if stream is None else logging.StreamHandler(stream)
    )
    terminal = _is_terminal(handler.stream)
    as_json = (
        force_json
        if force_json is not None
        else (output == "json" or (output == "auto" and not terminal))
    )
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ConsoleFormatter(color=terminal and "NO_COLOR" not in os.environ))
    handler.addFilter(ContextFilter())
    setattr(handler, _OURS, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(root_level)
    for name in _levelled - set(levels):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, number in levels.items():
        logging.getLogger(name).setLevel(number)
    _levelled.clear()
    _levelled.update(levels)
    return handler
