"""Route bookkeeping shared by the plugin registry and the gateway: what a route claims."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

ANY_METHOD = "*"
REST_OF_PATH = "/{path:path}"  # what a mount claims below its prefix


def route_claims(route: Any) -> Iterator[tuple[str, str]]:
    """``(path, method)`` pairs a Starlette route answers; a mount claims its whole prefix."""
    from starlette.routing import Mount, Route, WebSocketRoute

    if isinstance(route, Route):
        for method in sorted(route.methods or {ANY_METHOD}):
            if method != "HEAD":
                yield route.path, method
    elif isinstance(route, WebSocketRoute):
        yield route.path, "WEBSOCKET"
    elif isinstance(route, Mount):
        yield route.path.rstrip("/") + REST_OF_PATH, ANY_METHOD
    else:
        yield getattr(route, "path", repr(route)), ANY_METHOD


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/") if path.strip("/") else []


def _is_param(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def _is_rest(segment: str) -> bool:
    """A ``{name:path}`` parameter: it matches the rest of the path, slashes included."""
    return _is_param(segment) and segment[1:-1].partition(":")[2] == "path"


def _overlaps(path: str, other: str) -> bool:
    """Whether some request path could match both templates (parameters match anything)."""
    left, right = _segments(path), _segments(other)
    for index in range(max(len(left), len(right))):
        a = left[index] if index < len(left) else None
        b = right[index] if index < len(right) else None
        if (a is not None and _is_rest(a)) or (b is not None and _is_rest(b)):
            return True
        if a is None or b is None:
            return False
        if a != b and not (_is_param(a) or _is_param(b)):
            return False
    return True


def find_conflict(
    routes: Iterable[Any], taken: dict[tuple[str, str], str]
) -> tuple[str, str, str] | None:
    """The first ``(path, method, owner)`` among ``routes`` already claimed in ``taken``.

    ``/api/items/{id}`` and ``/api/items/{item_id}`` collide, and so do ``/api/items/new``
    and ``/api/items/{id}``: whichever was matched first would silently shadow the other.
    """
    for route in routes:
        for path, method in route_claims(route):
            for (other_path, other_method), owner in taken.items():
                same_method = ANY_METHOD in (method, other_method) or method == other_method
                if same_method and _overlaps(path, other_path):
                    return path, method, owner
    return None


def describe(route: Any, owner: str) -> dict[str, Any]:
    from starlette.routing import Mount, Route

    methods = sorted(route.methods - {"HEAD"}) if isinstance(route, Route) and route.methods else []
    kind = "mount" if isinstance(route, Mount) else type(route).__name__.lower()
    return {
        "path": getattr(route, "path", ""),
        "methods": methods,
        "name": getattr(route, "name", None),
        "kind": kind,
        "plugin": owner,
    }
