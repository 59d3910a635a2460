"""Context variables shared by the platform, the gateway and the event bus."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import Scope

    from chatterfix.events.model import Event
    from chatterfix.platform import Platform

current_platform: contextvars.ContextVar[Platform | None] = contextvars.ContextVar(
    "chatterfix_platform", default=None
)
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "chatterfix_request_id", default=None
)
# The plugin generation whose code is running: subscriptions made now belong to it.
current_plugin_owner: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "chatterfix_plugin_owner", default=None
)
# The event whose handlers are running: events emitted now carry its correlation id.
current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "chatterfix_current_event", default=None
)
# The ASGI scope of the gateway request being served: logging looks up the matched route's
# plugin only when a record is emitted, rather than on every request.
current_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "chatterfix_scope", default=None
)
# The gateway routing generation serving the current request (see chatterfix.gateway.app).
serving_routing: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "chatterfix_serving_routing", default=None
)
