"""Permission names and route-level permission requirements.

Light on purpose (no SQLAlchemy, no Starlette at import): the platform and plugins import
it at start-up.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from starlette.requests import Request

    from chatterfix.services.auth import User

ADMIN_PERMISSION = "platform.admin"
PLATFORM_PERMISSIONS = {
    ADMIN_PERMISSION: "Manage the platform: plugins, configuration, events, services, users",
    "ai.use": "Call the shared AI service over HTTP (/platform/ai/...)",
}
REQUIRED_PERMISSION_ATTRIBUTE = "__chatterfix_permission__"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def grants(held: Iterable[str], permission: str) -> bool:
    """Whether ``held`` permissions cover ``permission`` (``*`` and ``area.*`` included)."""
    for name in held:
        if name in ("*", permission):
            return True
        if name.endswith(".*") and permission.startswith(name[:-1]):
            return True
    return False


def current_user(request: Request) -> User | None:
    """The user whose API token came with ``request`` (``None`` when it came without)."""
    user: User | None = request.scope.get("state", {}).get("user")
    return user


def require(request: Request, permission: str | None = None) -> User:
    """The request's user; a JSON 401 without a valid token, a 403 without ``permission``.

    Everything is allowed when ``auth.enabled`` is off (development only).
    """
    from chatterfix.gateway.errors import APIError
    from chatterfix.services.auth import User

    platform = request.app.state.platform
    if not platform.config.get("auth.enabled"):
        return User(id=0, username="anonymous", permissions=frozenset({"*"}))
    user = current_user(request)
    if user is None:
        raise APIError(
            401,
            "authentication required: send an API token as 'Authorization: Bearer <token>'",
            "authentication_required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if permission is not None and not user.has_permission(permission):
        raise APIError(
            403,
            f"permission {permission!r} is required",
            "permission_denied",
            permission=permission,
        )
    return user


def requires(permission: str) -> Callable[[Endpoint], Endpoint]:
    """Decorate a Starlette endpoint ``(request) -> response`` so that only users holding
    ``permission`` reach it: others get a JSON 401 (no token) or 403 (not allowed)."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        if inspect.iscoroutinefunction(endpoint):

            @functools.wraps(endpoint)
            async def guarded(request: Request, *args: Any, **kwargs: Any) -> Any:
                require(request, permission)
                return await endpoint(request, *args, **kwargs)

        else:

            @functools.wraps(endpoint)
            def guarded(request: Request, *args: Any, **kwargs: Any) -> Any:
                require(request, permission)
                return endpoint(request, *args, **kwargs)

        setattr(guarded, REQUIRED_PERMISSION_ATTRIBUTE, permission)
        return guarded  # type: ignore[return-value]

    return decorate
