"""Route bookkeeping shared by the plugin registry and the gateway: what a route claims."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

ANY_METHOD = "*"


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
        yield route.path.rstrip("/") + "/{path:path}", ANY_METHOD
    else:
        yield getattr(route, "path", repr(route)), ANY_METHOD


PREFIX_SUFFIX = "/{path:path}"


def _overlaps(path: str, other: str) -> bool:
    """Same path, or one of them is a prefix claim (a mount) that covers the other."""
    if path == other:
        return True
    for prefix_claim, concrete in ((path, other), (other, path)):
        if prefix_claim.endswith(PREFIX_SUFFIX):
            prefix = prefix_claim[: -len(PREFIX_SUFFIX)]
            if concrete == prefix or concrete.startswith(prefix + "/"):
                return True
    return False


def find_conflict(
    routes: Iterable[Any], taken: dict[tuple[str, str], str]
) -> tuple[str, str, str] | None:
    """The first ``(path, method, owner)`` among ``routes`` already claimed in ``taken``."""
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
