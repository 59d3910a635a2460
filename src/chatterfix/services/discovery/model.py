"""Service instances and services: what is registered, its health, its traffic figures, and
how one instance is picked among the healthy ones (load balancing)."""

from __future__ import annotations

import math
import re
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import attrs

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
STRATEGIES = ("round_robin", "least_connections", "weighted")
SOURCES = ("api", "python", "manifest")


class RegistrationError(ValueError):
    """A registration that cannot be accepted; ``field`` names the value at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def instance_key(service: str, url: str) -> str:
    return f"{service}\n{url}"


def normalize_url(url: str, port: int | None = None) -> str:
    """``url`` without a trailing slash, with ``port`` added when the URL has none."""
    if not isinstance(url, str):
        raise RegistrationError("url", f"expected a string, got {url!r}")
    text = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(text)
    try:
        explicit = parts.port
    except ValueError:
        raise RegistrationError("url", f"{url!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in text:
        raise RegistrationError("url", f"{url!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise RegistrationError("url", f"{url!r}: a service URL has no query or fragment")
    if port is not None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise RegistrationError("port", f"{port!r} is not a TCP port (1-65535)")
        if explicit is None:
            host = parts.netloc.rsplit("@", 1)[-1]
            text = urllib.parse.urlunsplit((parts.scheme, f"{host}:{port}", parts.path, "", ""))
    return text


class LatencyWindow:
    """The last ``size`` latencies (milliseconds) of an instance, for its percentiles."""

    __slots__ = ("_count", "_next", "_values")

    def __init__(self, size: int) -> None:
        self._values = [0.0] * max(size, 1)
        self._next = 0
        self._count = 0

    def add(self, milliseconds: float) -> None:
        values = self._values
        index = self._next
        values[index] = milliseconds
        index += 1
        self._next = 0 if index == len(values) else index
        if self._count < len(values):
            self._count += 1

    def percentiles(self, *wanted: float) -> list[float | None]:
        """Nearest-rank percentiles (``None`` before the first request)."""
        if not self._count:
            return [None for _ in wanted]
        ordered = sorted(self._values[: self._count])
        last = len(ordered) - 1
        return [
            round(ordered[min(last, max(0, math.ceil(p / 100 * len(ordered)) - 1))], 3)
            for p in wanted
        ]


@attrs.define(eq=False, slots=True)
class Instance:
    """One registered instance of a service.

    The registration (``url``, ``health_endpoint``, ``weight``, ``strip_prefix``,
    ``metadata``, ``ttl``, ``expires_at``, ``source``) is what replicas share; health and
    traffic figures are this gateway's view.
    """

    service: str
    url: str
    health_endpoint: str = "/health"
    weight: int = 1
    strip_prefix: bool = False
    metadata: dict[str, str] = attrs.field(factory=dict)
    ttl: float | None = None
    expires_at: float | None = None  # wall clock (time.time()), shared between replicas
    source: str = "python"
    registered_at: float = 0.0  # wall clock

    healthy: bool = True
    reason: str = ""
    ejected_until: float = 0.0  # wall clock; an active check re-admits only after it
    ejections: int = 0  # passive ejections in a row (the next one lasts longer)
    check_failures: int = 0
    check_passes: int = 0
    next_check: float = 0.0  # monotonic
    checking: bool = False
    last_check: float | None = None  # wall clock
    last_check_error: str = ""

    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    consecutive_5xx: int = 0
    current_weight: int = 0  # smooth weighted round-robin
    latencies: LatencyWindow = attrs.field(factory=lambda: LatencyWindow(1024))

    @property
    def key(self) -> str:
        return instance_key(self.service, self.url)

    def registration(self) -> dict[str, Any]:
        """The shared part, as JSON-ready data."""
        return {
            "service": self.service,
            "url": self.url,
            "health_endpoint": self.health_endpoint,
            "weight": self.weight,
            "strip_prefix": self.strip_prefix,
            "metadata": dict(self.metadata),
            "ttl": self.ttl,
            "expires_at": self.expires_at,
            "source": self.source,
            "registered_at": self.registered_at,
        }

    def update_registration(self, data: dict[str, Any]) -> bool:
        """Take the shared fields from ``data``; True when something other than the expiry
        changed."""
        changed = False
        for field in ("health_endpoint", "weight", "strip_prefix", "metadata", "ttl", "source"):
            value = data.get(field, getattr(self, field))
            if value != getattr(self, field):
                setattr(self, field, value)
                changed = True
        self.expires_at = data.get("expires_at")
        return changed

    def stats(self) -> dict[str, Any]:
        p50, p95 = self.latencies.percentiles(50, 95)
        return {
            "service": self.service,
            "url": self.url,
            "healthy": self.healthy,
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": p50,
            "p95_ms": p95,
            "in_flight": self.in_flight,
        }

    def describe(self, now: float) -> dict[str, Any]:
        return {
            **self.stats(),
            "health_endpoint": self.health_endpoint,
            "weight": self.weight,
            "strip_prefix": self.strip_prefix,
            "metadata": dict(self.metadata),
            "source": self.source,
            "ttl": self.ttl,
            "expires_in": (
                round(max(0.0, self.expires_at - now), 3) if self.expires_at is not None else None
            ),
            "reason": self.reason,
            "last_check": _iso(self.last_check),
            "last_check_error": self.last_check_error,
        }


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def instance_from(data: dict[str, Any], window: int) -> Instance:
    """An instance from shared registration data (see :meth:`Instance.registration`)."""
    return Instance(
        service=data["service"],
        url=data["url"],
        health_endpoint=data.get("health_endpoint", "/health"),
        weight=int(data.get("weight", 1)),
        strip_prefix=bool(data.get("strip_prefix", False)),
        metadata=dict(data.get("metadata") or {}),
        ttl=data.get("ttl"),
        expires_at=data.get("expires_at"),
        source=data.get("source", "api"),
        registered_at=float(data.get("registered_at") or 0.0),
        latencies=LatencyWindow(window),
    )


class Service:
    """The instances registered under one name and the load-balancing state over the healthy
    ones. ``healthy`` is rebuilt on every change of membership or health, so that picking an
    instance on the request path is a few list operations."""

    __slots__ = ("_turn", "healthy", "instances", "name", "strategy")

    def __init__(self, name: str, strategy: str) -> None:
        self.name = name
        self.strategy = strategy
        self.instances: dict[str, Instance] = {}  # url -> instance
        self.healthy: list[Instance] = []
        self._turn = 0

    def refresh(self) -> None:
        self.healthy = [instance for instance in self.instances.values() if instance.healthy]

    def pick(self, exclude: Instance | None = None) -> Instance | None:
        """A healthy instance other than ``exclude``, by the service's strategy."""
        candidates = self.healthy
        if exclude is not None:
            candidates = [instance for instance in candidates if instance is not exclude]
        count = len(candidates)
        if count == 0:
            return None
        if count == 1:
            return candidates[0]
        turn = self._turn
        self._turn = turn + 1
        strategy = self.strategy
        if strategy == "round_robin":
            return candidates[turn % count]
        if strategy == "least_connections":
            # Fewest requests in flight; ties go round in turn, so equal instances share.
            best = candidates[turn % count]
            for offset in range(1, count):
                instance = candidates[(turn + offset) % count]
                if instance.in_flight < best.in_flight:
                    best = instance
            return best
        # Smooth weighted round-robin (as nginx does): over any window of sum(weights)
        # picks, each instance is picked in proportion to its weight, evenly spread.
        total = 0
        chosen = candidates[0]
        for instance in candidates:
            instance.current_weight += instance.weight
            total += instance.weight
            if instance.current_weight > chosen.current_weight:
                chosen = instance
        chosen.current_weight -= total
        return chosen
