"""Plugin manifests (``plugin.json``): the data, its strict converter and its errors."""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class AppType(StrEnum):
    AI_SERVICE = "ai_service"
    WEB_APP = "web_app"
    API = "api"
    MICROSERVICE = "microservice"


class FieldError(ValueError):
    """Raised by a field validator; carries the field's name."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the source and the field."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        super().__init__(f"{source}: field '{field}': {message}")


def _check_name(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not NAME_PATTERN.fullmatch(value):
        raise FieldError(
            attribute.name,
            f"{value!r} is not a valid plugin name (letters, digits and underscores, "
            "not starting with a digit)",
        )


def _check_version(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        Version(value)
    except InvalidVersion:
        raise FieldError(
            attribute.name, f"{value!r} is not a valid version (PEP 440, e.g. '1.0.0')"
        ) from None


def _check_dependencies(_: Any, attribute: attrs.Attribute[list[str]], value: list[str]) -> None:
    for item in value:
        try:
            requirement = Requirement(item)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]
            raise FieldError(
                attribute.name, f"{item!r} is not a valid dependency: {reason}"
            ) from None
        if not NAME_PATTERN.fullmatch(requirement.name):
            raise FieldError(attribute.name, f"{item!r} does not name a valid plugin")


def _check_routes(_: Any, attribute: attrs.Attribute[list[str]], value: list[str]) -> None:
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise FieldError(
                attribute.name, f"{pattern!r} is not a valid route pattern: {exc}"
            ) from None


def _check_port(_: Any, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise FieldError(attribute.name, f"{value} is not a TCP port (1-65535)")


def _check_path(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith("/"):
        raise FieldError(attribute.name, f"{value!r} must start with '/'")


def _check_url(_: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is None:
        return
    parts = urllib.parse.urlsplit(value)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or " " in value:
        raise FieldError(attribute.name, f"{value!r} is not an http(s) URL")


def _check_schema(
    _: Any, attribute: attrs.Attribute[dict[str, dict[str, Any]]], value: dict[str, Any]
) -> None:
    for key, spec in value.items():
        if not isinstance(spec, dict):
            raise FieldError(
                attribute.name, f"entry {key!r} must be an object with 'type' and 'default'"
            )


@attrs.frozen(kw_only=True)
class PluginManifest:
    """What a plugin declares about itself: the seed's ``plugin.json`` fields.

    ``url``/``port`` without in-process code make a *remote app*, proxied by the gateway.
    ``module`` names the Python file or package of a plugins-folder plugin when it is not
    ``main.py`` or a package named after the plugin.
    """

    name: str = attrs.field(validator=_check_name)
    version: str = attrs.field(default="0.0.0", validator=_check_version)
    description: str = ""
    author: str = ""
    app_type: AppType = AppType.MICROSERVICE
    dependencies: list[str] = attrs.field(factory=list, validator=_check_dependencies)
    routes: list[str] = attrs.field(factory=list, validator=_check_routes)
    permissions: list[str] = attrs.field(factory=list)
    enabled: bool = True
    auto_start: bool = True
    port: int | None = attrs.field(default=None, validator=_check_port)
    health_endpoint: str = attrs.field(default="/health", validator=_check_path)
    config_schema: dict[str, dict[str, Any]] = attrs.field(factory=dict, validator=_check_schema)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    url: str | None = attrs.field(default=None, validator=_check_url)
    strip_prefix: bool = False
    module: str | None = None

    @functools.cached_property
    def requirements(self) -> list[Requirement]:
        return [Requirement(item) for item in self.dependencies]

    @property
    def is_remote_capable(self) -> bool:
        return self.url is not None or self.port is not None


def _strict(kind: type, label: str) -> Any:
    def structure(value: Any, _: Any) -> Any:
        # cattrs would otherwise coerce "false" to True and "8100" to 8100: a manifest that says
        # the wrong thing must fail loudly instead.
        if type(value) is not kind and not (kind is float and type(value) is int):
            raise TypeError(f"expected {label}, got {type(value).__name__} {value!r}")
        return value

    return structure


def _structure_datetime(value: Any, _: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 date-time string, got {value!r}")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time") from None


def _structure_app_type(value: Any, _: Any) -> AppType:
    try:
        return AppType(value)
    except ValueError:
        allowed = ", ".join(item.value for item in AppType)
        raise ValueError(f"{value!r} is not one of: {allowed}") from None


def _structure_string_list(value: Any, _: Any) -> list[str]:
    # cattrs would turn the string "ai.use" into ["a", "i", ...].
    if not isinstance(value, list):
        raise TypeError(f"expected a list of strings, got {type(value).__name__} {value!r}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"item {index}: expected a string, got {type(item).__name__} {item!r}")
    return value


def _structure_any_dict(value: Any, _: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(bool, _strict(bool, "true or false"))
    converter.register_structure_hook(datetime, _structure_datetime)
    converter.register_structure_hook_func(lambda kind: kind == list[str], _structure_string_list)
    converter.register_structure_hook(AppType, _structure_app_type)
    converter.register_structure_hook_func(
        lambda kind: kind == dict[str, dict[str, Any]], _structure_any_dict
    )
    converter.register_unstructure_hook(datetime, lambda value: value.isoformat())
    converter.register_unstructure_hook(AppType, lambda value: value.value)
    return converter


converter = _make_converter()


def _first_problem(exc: BaseException, path: str = "") -> tuple[str, str]:
    """Dig the first leaf error and its field path out of a cattrs exception group."""
    if isinstance(exc, FieldError):
        return exc.field, str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        names = ", ".join(sorted(exc.extra_fields))
        return (path + "." if path else "") + sorted(exc.extra_fields)[0], (
            f"unknown field(s): {names}"
        )
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            note = _note_of(sub)
            return _first_problem(sub, f"{path}.{note}" if path and note else note or path)
    return path or "?", str(exc)


def _note_of(exc: BaseException) -> str:
    for note in getattr(exc, "__notes__", []):
        name = getattr(note, "name", None)
        if name is not None:
            return str(name)
        index = getattr(note, "index", None)
        if index is not None:
            return f"[{index}]"
    return ""


def structure_manifest(data: Any, source: str) -> PluginManifest:
    """Validate raw manifest data; a problem raises :class:`ManifestError` naming the field."""
    if not isinstance(data, Mapping):
        raise ManifestError(source, "(root)", "a manifest must be a JSON object")
    if "name" not in data:
        raise ManifestError(source, "name", "is required")
    try:
        return converter.structure(dict(data), PluginManifest)
    except (ClassValidationError, ForbiddenExtraKeysError) as exc:
        field, message = _first_problem(exc)
        raise ManifestError(source, field.replace(".[", "["), message) from None
    except FieldError as exc:
        # attrs validators run in __init__, after cattrs has matched the fields.
        raise ManifestError(source, exc.field, str(exc)) from None


def load_manifest_file(path: Path) -> PluginManifest:
    """Read and validate a ``plugin.json``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(str(path), "(file)", f"cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            str(path), "(file)", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    return structure_manifest(data, str(path))


def manifest_to_dict(manifest: PluginManifest) -> dict[str, Any]:
    data: dict[str, Any] = converter.unstructure(manifest)
    return data
