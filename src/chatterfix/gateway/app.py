"""Assembly of the gateway from the platform's routes and the running plugins' hooks.

The gateway is a small ASGI object holding one *routing*: a fully built Starlette
application (routes plus middleware). A plugin change builds a new routing and swaps it in
with a single assignment, so a request is served entirely by the routing it started on, and
the old one can be drained before the old plugin code is shut down.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from chatterfix.context import current_plugin_owner
from chatterfix.gateway.api import PLATFORM_ROUTES
from chatterfix.gateway.errors import (
    APIError,
    api_error_handler,
    error_response,
    http_exception_handler,
    internal_error_handler,
)
from chatterfix.gateway.metrics import Metrics, route_labels
from chatterfix.gateway.pipeline import PipelineContext, build_pipeline
from chatterfix.gateway.proxy import Proxy
from chatterfix.gateway.ratelimit import RateLimiter, backend_for
from chatterfix.gateway.routing import RequestIds, Routing
from chatterfix.plugins import PluginState

if TYPE_CHECKING:
    from chatterfix.platform import Platform

logger = logging.getLogger("chatterfix.gateway")


class Gateway:
    """The platform's ASGI application; its lifespan runs the platform."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.request_ids = RequestIds()
        config = platform.config
        self.metrics = Metrics(platform)
        self.rate_limiter = RateLimiter(
            backend_for(
                str(config.get("gateway.rate_limit.backend")),
                str(config.get("gateway.rate_limit.key_prefix")),
            )
        )
        self._unwatch = self._watch_config()
        self.proxy = Proxy(platform)  # remote apps and registered services
        self.routing = self._build()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.routing(scope, receive, send)

    def rebuild(self) -> Routing:
        """Swap in a routing built from the plugins' current state; return the old one."""
        previous = self.routing
        self.routing = self._build()
        return previous

    async def drain(self, previous: object, grace: float) -> None:
        """Wait up to ``grace`` seconds for ``previous`` to finish its requests."""
        assert isinstance(previous, Routing)
        with anyio.move_on_after(grace):
            await previous.wait_idle()
        if previous.busy:
            logger.warning("%d request(s) still running after %.1fs", previous.busy, grace)

    def _build(self) -> Routing:
        platform = self.platform
        running = platform.plugins.running()
        plugin_routes = [route for record in running for route in record.routes]
        plugin_middleware = [entry for record in running for entry in record.middleware]
        handlers = {HTTPException: http_exception_handler, APIError: api_error_handler}
        # Plugin routes first: they carry the traffic, and no plugin route can shadow a
        # platform one (collisions are refused when a plugin starts).
        routes = [*plugin_routes, *PLATFORM_ROUTES]
        app = Starlette(
            routes=routes, exception_handlers={**handlers, Exception: internal_error_handler}
        )
        app.state.platform = platform
        app.router.default = self._not_found
        app.middleware_stack = app.build_middleware_stack()
        # Innermost: requests for remote apps and registered services skip the router.
        served = self.proxy.wrap(app, running)
        return self._pipeline(served, app, routes, plugin_middleware, handlers)

    def _pipeline(
        self,
        inner: ASGIApp,
        app: Starlette,
        routes: list[Any],
        plugin_middleware: list[Middleware],
        handlers: dict[Any, Any],
    ) -> Routing:
        """``inner`` inside the stages of ``gateway.middleware``, inside the routing layer
        (see :mod:`chatterfix.gateway.pipeline`)."""
        platform = self.platform
        context = PipelineContext(platform, routes, plugin_middleware, handlers, self.rate_limiter)
        chain, stages = build_pipeline(inner, context)
        metrics = bool(platform.config.get("gateway.metrics"))
        return Routing(
            chain,
            platform,
            self.request_ids,
            starlette=app,
            metrics=self.metrics.requests if metrics else None,
            route_labels=route_labels(routes) if metrics else None,
            stages=stages,
        )

    def _watch_config(self) -> Any:
        """Rebuild the routing when a ``gateway.*`` setting changes (the pipeline's stages
        read theirs when a generation is built)."""
        token = current_plugin_owner.set(None)  # the gateway's watcher, not a plugin's
        try:
            return self.platform.config.watch("gateway", self._config_changed)
        finally:
            current_plugin_owner.reset(token)

    def _config_changed(self, key: str, value: Any) -> None:
        if key == "gateway.rate_limit.backend" or key == "gateway.rate_limit.key_prefix":
            logger.warning("%s applies at the next start of the gateway", key)
            return
        try:
            self.routing = self._build()
        except Exception:
            logger.exception("%s changed; the gateway keeps its previous pipeline", key)

    async def aclose(self) -> None:
        """Release what the gateway holds between requests (the rate limiter's client)."""
        await self.rate_limiter.aclose()

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"].split("/", 3)
        if len(parts) > 2 and parts[1] == "api" and self.proxy.serves(parts[2]):
            # A service named like a plugin with routes: what the plugin does not serve.
            await self.proxy(scope, receive, send, parts[2])
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = self._unavailable_plugin(scope["path"]) or error_response(
            404, f"no route for {scope['method']} {scope['path']}"
        )
        await response(scope, receive, send)

    def _unavailable_plugin(self, path: str) -> Any:
        """A 503 naming the plugin when the path belongs to one that is not running."""
        parts = path.split("/")
        if len(parts) < 3 or parts[1] != "api":
            return None
        record = self.platform.plugins.records.get(parts[2])
        if record is None:
            return None
        if record.state is PluginState.RUNNING:
            return None  # a remote app's paths are proxied (see chatterfix.gateway.proxy)
        detail = f": {record.error_message}" if record.error_message else ""
        return error_response(
            503,
            f"plugin {record.name!r} is not running (state {record.state.value}{detail})",
            "plugin_unavailable",
            plugin=record.name,
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        phase = "startup"
        try:
            async with self.platform:  # starting the plugins rebuilds the routing
                await send({"type": "lifespan.startup.complete"})
                phase = "shutdown"
                await receive()  # lifespan.shutdown
        except Exception as exc:
            logger.exception("platform %s failed", phase)
            await send({"type": f"lifespan.{phase}.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})
