"""Per-route settings for the gateway's pipeline and its OpenAPI document.

Decorators put a setting on an endpoint (a function, or a method of an ``HTTPEndpoint``
class) as an attribute; the gateway reads it when it builds a routing generation::

    @chatterfix.rate_limit("10/minute")
    @chatterfix.max_body("50MB")
    @chatterfix.openapi(summary="Upload a photo of the asset")
    async def upload(request): ...

Light on purpose (no Starlette at import), like :mod:`chatterfix.permissions`: plugins
import it when they are imported. Values are checked when the decorator runs, so a typo
fails the plugin's import with a message, not a request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

RATE_LIMIT_ATTRIBUTE = "__chatterfix_rate_limit__"
MAX_BODY_ATTRIBUTE = "__chatterfix_max_body__"
OPENAPI_ATTRIBUTE = "__chatterfix_openapi__"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE = re.compile(
    r"\s*(?P<count>\d+)\s*(?:/|per)\s*(?P<amount>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+?)s?\s*",
    re.IGNORECASE,
)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"\s*(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>[a-z]*)\s*", re.IGNORECASE)
UNLIMITED_WORDS = frozenset({"unlimited", "none", "off"})


@attrs.frozen
class Limit:
    """A token bucket: ``count`` requests at once, refilled at ``count`` per ``period``
    seconds (so ``count / period`` requests per second in the long run)."""

    count: int
    period: float
    text: str = ""

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self.count / self.period

    @property
    def policy(self) -> str:
        """The ``RateLimit-Policy`` value: ``10;w=60``."""
        window = int(self.period) if float(self.period).is_integer() else self.period
        return f"{self.count};w={window}"

    def __str__(self) -> str:
        return self.text or f"{self.count}/{self.period:g}s"


def parse_limit(text: str) -> Limit:
    """``"10/minute"``, ``"5 per second"``, ``"100/15m"``, ``"1000/day"`` as a :class:`Limit`;
    :class:`ValueError` says what is expected."""
    match = _RATE.fullmatch(text)
    unit = match.group("unit").lower() if match else ""
    if match is None or unit not in _PERIODS:
        raise ValueError(
            f"invalid rate limit {text!r}: expected 'N/second', 'N/minute', 'N/hour', "
            "'N/day' or 'N/<amount><s|m|h|d>' such as '100/15m'"
        )
    count = int(match.group("count"))
    period = float(match.group("amount") or 1) * _PERIODS[unit]
    if count < 1 or period <= 0:
        raise ValueError(f"invalid rate limit {text!r}: needs at least 1 request per period")
    return Limit(count, period, text.strip())


def parse_size(value: int | str) -> int:
    """A byte count from ``52428800``, ``"50MB"`` (decimal units: KB, MB, GB) or ``"50MiB"``
    (binary units: KiB, MiB, GiB); :class:`ValueError` says what is expected."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: expected bytes or a text such as '50MB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: must not be negative")
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    unit = match.group("unit").lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {value!r}: expected bytes or a text such as '512KB', '50MB', "
            "'1GiB' (KB, MB, GB are powers of 1000; KiB, MiB, GiB powers of 1024)"
        )
    return math.floor(float(match.group("amount")) * _SIZE_UNITS[unit])


def rate_limit(limit: str | None) -> Callable[[Endpoint], Endpoint]:
    """Give a route its own rate limit (``"10/minute"``), or none at all (``None`` or
    ``"unlimited"``), instead of the gateway's default (``gateway.rate_limit``).

    A route's limit is a bucket of its own per client (API token, else IP address):
    requests to it do not count against the default limit.
    """
    parsed = (
        None if limit is None or limit.strip().lower() in UNLIMITED_WORDS else parse_limit(limit)
    )

    def decorate(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, RATE_LIMIT_ATTRIBUTE, parsed)
        return endpoint

    return decorate


def max_body(size: int | str | None) -> Callable[[Endpoint], Endpoint]:
    """Accept request bodies up to ``size`` on this route (``"50MB"``, ``"1GiB"``, a byte
    count, or ``None`` for no limit) instead of ``gateway.max_body_bytes``."""
    parsed = 0 if size is None else parse_size(size)

    def decorate(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, MAX_BODY_ATTRIBUTE, parsed)
        return endpoint

    return decorate


def openapi(
    operation: Mapping[str, Any] | None = None,
    *,
    summary: str | None = None,
    description: str | None = None,
    request_body: Mapping[str, Any] | None = None,
    responses: Mapping[int | str, Any] | None = None,
    parameters: list[Mapping[str, Any]] | None = None,
    tags: list[str] | None = None,
    deprecated: bool | None = None,
    include: bool = True,
) -> Callable[[Endpoint], Endpoint]:
    """Describe an endpoint in the gateway's OpenAPI document (``GET /openapi.json``).

    ``operation`` is an OpenAPI Operation Object merged over the one the gateway generates
    (path parameters, tag, security, error responses); the keywords are shortcuts for its
    common fields. ``request_body`` and each value of ``responses`` may be a whole OpenAPI
    object, or just a JSON schema (then taken as ``application/json`` content).
    ``include=False`` leaves the endpoint out of the document.
    """
    fields: dict[str, Any] = dict(operation or {})
    if summary is not None:
        fields["summary"] = summary
    if description is not None:
        fields["description"] = description
    if request_body is not None:
        fields["requestBody"] = _as_content(request_body, required=True)
    if responses is not None:
        fields["responses"] = {
            str(status): _as_response(status, value) for status, value in responses.items()
        }
    if parameters is not None:
        fields["parameters"] = [dict(parameter) for parameter in parameters]
    if tags is not None:
        fields["tags"] = list(tags)
    if deprecated is not None:
        fields["deprecated"] = deprecated
    if not include:
        fields["x-chatterfix-exclude"] = True

    def decorate(endpoint: Endpoint) -> Endpoint:
        merged = {**getattr(endpoint, OPENAPI_ATTRIBUTE, {}), **fields}
        setattr(endpoint, OPENAPI_ATTRIBUTE, merged)
        return endpoint

    return decorate


def _as_content(value: Mapping[str, Any], *, required: bool) -> dict[str, Any]:
    if "content" in value:
        return dict(value)
    body: dict[str, Any] = {"content": {"application/json": {"schema": dict(value)}}}
    if required:
        body["required"] = True
    return body


def _as_response(status: int | str, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"description": value}
    if not isinstance(value, Mapping):
        raise TypeError(f"response {status}: expected an OpenAPI response or a JSON schema")
    if "description" in value or "content" in value:
        response = dict(value)
        response.setdefault("description", f"status {status}")
        return response
    return {"description": f"status {status}", **_as_content(value, required=False)}
