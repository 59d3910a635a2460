"""What a configuration key accepts: the JSON-schema-like entries of ``config_schema``.

An entry is ``{"type": ..., "default": ..., "description": ..., "enum": [...], "minimum": ...,
"maximum": ..., "items": {...}, "required": bool, "secret": bool}``; ``type`` is one of
``string``, ``integer``, ``number``, ``boolean``, ``array``, ``object``, ``null``, or a list
of them. :class:`Spec` checks a value against an entry (returning it coerced where the
meaning is unambiguous) and parses the text of an environment variable into its type.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")
NO_DEFAULT: Any = object()

_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"", "0", "false", "no", "off"}
_NOUNS = {
    "string": ("a string", "strings"),
    "integer": ("an integer", "integers"),
    "number": ("a number", "numbers"),
    "boolean": ("true or false", "booleans"),
    "array": ("a list", "lists"),
    "object": ("a table", "tables"),
    "null": ("null", "nulls"),
}


class Invalid(ValueError):
    """A value that does not fit its entry; the message says what was expected."""


class SchemaError(ValueError):
    """An entry of a schema that is not in the documented form."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@attrs.frozen
class Spec:
    """One schema entry, parsed; ``types`` empty means any value."""

    types: tuple[str, ...] = ()
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    items: Spec | None = None
    required: bool = False
    secret: bool = False
    default: Any = NO_DEFAULT
    description: str = ""

    @property
    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT

    def expected(self) -> str:
        """What a valid value looks like, in words: ``an integer between 1 and 65535``."""
        if self.enum is not None:
            return "one of " + ", ".join(repr(choice) for choice in self.enum)
        if not self.types:
            return "any value"
        words = " or ".join(self._noun(kind) for kind in self.types)
        return words + self._bounds()

    def _noun(self, kind: str) -> str:
        if kind == "array" and self.items is not None and len(self.items.types) == 1:
            return "a list of " + _NOUNS[self.items.types[0]][1]
        return _NOUNS[kind][0]

    def _bounds(self) -> str:
        if not {"integer", "number"} & set(self.types):
            return ""
        low, high = _plain(self.minimum), _plain(self.maximum)
        if low is not None and high is not None:
            return f" between {low} and {high}"
        if low is not None:
            return f" >= {low}"
        return f" <= {high}" if high is not None else ""

    def check(self, value: Any) -> Any:
        """``value`` coerced to this entry (``5`` for ``5.0`` as an integer, a list for a
        comma-separated string as an array), or :class:`Invalid`."""
        if self.types:
            value = self._fit_type(value)
        if self.items is not None and isinstance(value, list):
            checked = []
            for item in value:
                try:
                    checked.append(self.items.check(item))
                except Invalid as exc:
                    raise Invalid(f"{self.expected()}; {item!r} is not {exc}") from None
            value = checked
        if self.enum is not None:
            value = self._fit_enum(value)
        if _is_number(value) and not self._in_bounds(value):
            raise Invalid(self.expected())
        return value

    def _fit_type(self, value: Any) -> Any:
        for kind in self.types:
            fitted = _FITS[kind](value)
            if fitted is not _NO_FIT:
                return fitted
        raise Invalid(self.expected())

    def _fit_enum(self, value: Any) -> Any:
        choices = self.enum or ()
        if value in choices:
            return value
        if isinstance(value, str):  # "info" means "INFO": log levels are spelled both ways
            for choice in choices:
                if isinstance(choice, str) and choice.lower() == value.lower():
                    return choice
        raise Invalid(self.expected())

    def _in_bounds(self, value: float) -> bool:
        too_low = self.minimum is not None and value < self.minimum
        too_high = self.maximum is not None and value > self.maximum
        return not (too_low or too_high)

    def parse_text(self, raw: str) -> Any:
        """The value an environment variable (or a command-line argument) means for this
        entry. Text that fits no type is returned as it is, for :meth:`check` to reject."""
        if not self.types:
            return parse_untyped(raw)
        for kind in self.types:
            try:
                return _PARSERS[kind](raw)
            except ValueError:
                continue
        return raw


def _plain(bound: float | None) -> str | None:
    if bound is None:
        return None
    return str(int(bound)) if float(bound).is_integer() else str(bound)


_NO_FIT: Any = object()


def _fit_string(value: Any) -> Any:
    return value if isinstance(value, str) else _NO_FIT


def _fit_integer(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _NO_FIT


def _fit_number(value: Any) -> Any:
    return value if _is_number(value) else _NO_FIT


def _fit_boolean(value: Any) -> Any:
    return value if isinstance(value, bool) else _NO_FIT


def _fit_array(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):  # lists of names are also written "a, b"
        return split_names(value)
    return _NO_FIT


def _fit_object(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else _NO_FIT


def _fit_null(value: Any) -> Any:
    return None if value is None else _NO_FIT


_FITS: dict[str, Callable[[Any], Any]] = {
    "string": _fit_string,
    "integer": _fit_integer,
    "number": _fit_number,
    "boolean": _fit_boolean,
    "array": _fit_array,
    "object": _fit_object,
    "null": _fit_null,
}


def split_names(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_flag(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(raw)


def _parse_number(raw: str) -> int | float:
    try:
        return int(raw.strip())
    except ValueError:
        return float(raw.strip())


def _parse_array(raw: str) -> list[Any]:
    if not raw.lstrip().startswith("["):
        return split_names(raw)
    value = json.loads(raw)
    if not isinstance(value, list):
        raise ValueError(raw)
    return value


def _parse_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(raw)
    return value


def _parse_null(raw: str) -> None:
    if raw.strip() not in ("", "null"):
        raise ValueError(raw)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "string": str,
    "integer": lambda raw: int(raw.strip()),
    "number": _parse_number,
    "boolean": parse_flag,
    "array": _parse_array,
    "object": _parse_object,
    "null": _parse_null,
}


def parse_untyped(raw: str) -> Any:
    """Text for a key without a schema: a JSON number, boolean, list or object is read as
    JSON; anything else (``null`` included) stays the text it is."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return raw if value is None or isinstance(value, str) else value


def type_of_default(value: Any) -> tuple[str, ...]:
    """The type a built-in key takes from its default (``None``: any)."""
    for kind, python in (
        ("boolean", bool),
        ("integer", int),
        ("number", float),
        ("string", str),
        ("array", list),
        ("object", dict),
    ):
        if isinstance(value, python):
            return (kind,)
    return ()


def spec_from(entry: Mapping[str, Any], *, infer_type: bool = True) -> Spec:
    """Parse one schema entry; :class:`SchemaError` says what is wrong with it."""
    if not isinstance(entry, Mapping):
        raise SchemaError('must be an object such as {"type": "string", "default": ...}')
    default = entry.get("default", NO_DEFAULT)
    types = _types(entry.get("type"))
    if not types and infer_type and default is not NO_DEFAULT and default is not None:
        types = type_of_default(default)
    spec = Spec(
        types=types,
        enum=_enum(entry.get("enum")),
        minimum=_bound(entry, "minimum"),
        maximum=_bound(entry, "maximum"),
        items=spec_from(entry["items"], infer_type=False) if "items" in entry else None,
        required=_flag(entry, "required"),
        secret=_flag(entry, "secret"),
        default=default,
        description=str(entry.get("description", "")),
    )
    if spec.items is not None and "array" not in types:
        raise SchemaError("'items' is only for type 'array'")
    return spec


def _types(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    kinds = [value] if isinstance(value, str) else value
    if not isinstance(kinds, Sequence) or not kinds:
        raise SchemaError(f"'type' must be a type name or a list of them, got {value!r}")
    for kind in kinds:
        if kind not in TYPES:
            raise SchemaError(f"unknown type {kind!r}; use one of {', '.join(TYPES)}")
    return tuple(kinds)


def _enum(value: Any) -> tuple[Any, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise SchemaError(f"'enum' must be a non-empty list, got {value!r}")
    return tuple(value)


def _bound(entry: Mapping[str, Any], name: str) -> float | None:
    value = entry.get(name)
    if value is not None and not _is_number(value):
        raise SchemaError(f"{name!r} must be a number, got {value!r}")
    return value


def _flag(entry: Mapping[str, Any], name: str) -> bool:
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise SchemaError(f"{name!r} must be true or false, got {value!r}")
    return value
