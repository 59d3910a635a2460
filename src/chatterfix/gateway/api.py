"""The platform's own endpoints: health, status, plugins, routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chatterfix.gateway import config_api, events_api
from chatterfix.gateway.ai_api import AI_ROUTES
from chatterfix.gateway.auth_api import AUTH_ROUTES
from chatterfix.gateway.errors import APIError
from chatterfix.gateway.metrics import METRICS_ROUTES
from chatterfix.gateway.openapi import OPENAPI_ROUTES
from chatterfix.gateway.routing import exempt_from_drain, platform_of
from chatterfix.gateway.services_api import SERVICE_ROUTES
from chatterfix.permissions import ADMIN_PERMISSION, requires
from chatterfix.plugins import PluginActionError, PluginNotFound, PluginRecord
from chatterfix.route_options import rate_limit
from chatterfix.routes import describe, route_claims

if TYPE_CHECKING:
    from chatterfix.platform import Platform

PLUGIN_ACTIONS = ("start", "stop", "reload")


@rate_limit(None)  # probes are never refused
async def health(request: Request) -> Response:
    report = await platform_of(request).health()
    return JSONResponse(report, status_code=503 if report["status"] == "unhealthy" else 200)


@rate_limit(None)
async def health_live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


@rate_limit(None)
async def health_ready(request: Request) -> Response:
    platform = platform_of(request)
    if not platform.started:
        raise APIError(503, "the platform is not started yet", "not_ready")
    return JSONResponse({"status": "ready", "plugins_running": len(platform.plugins.running())})


async def platform_status(request: Request) -> Response:
    return JSONResponse(await platform_of(request).status())


async def list_plugins(request: Request) -> Response:
    platform = platform_of(request)
    show = platform.shows_tracebacks
    return JSONResponse(
        {
            "plugins": [
                record.summary(tracebacks=show) for record in platform.plugins.records.values()
            ],
            "load_errors": platform.load_errors_view(),
        }
    )


def _record(platform: Platform, name: str) -> PluginRecord:
    try:
        return platform.plugins.get(name)
    except PluginNotFound as exc:
        raise APIError(404, str(exc), "plugin_not_found") from None


async def show_plugin(request: Request) -> Response:
    platform = platform_of(request)
    record = _record(platform, request.path_params["name"])
    return JSONResponse(record.summary(tracebacks=platform.shows_tracebacks))


@requires(ADMIN_PERMISSION)
async def plugin_action(request: Request) -> Response:
    platform = platform_of(request)
    name = request.path_params["name"]
    action = request.path_params["action"]
    if action not in PLUGIN_ACTIONS:
        raise APIError(404, f"unknown action {action!r}; use one of {', '.join(PLUGIN_ACTIONS)}")
    _record(platform, name)
    registry = platform.plugins
    try:
        with exempt_from_drain():
            if action == "start":
                await registry.start_plugin(name)
                affected = [name]
            elif action == "stop":
                affected = await registry.stop_plugin(name)
            else:
                await registry.reload_plugin(name)
                affected = [name]
    except PluginActionError as exc:
        raise APIError(409, str(exc), f"plugin_{action}_failed") from None
    return JSONResponse(
        {
            "action": action,
            "plugin": name,
            "affected": affected,
            "status": registry.get(name).state.value,
            "plugins": {item: registry.get(item).state.value for item in affected},
        }
    )


async def list_routes(request: Request) -> Response:
    platform = platform_of(request)
    routes = [describe(route, "platform") for route in PLATFORM_ROUTES]
    for record in platform.plugins.running():
        routes.extend(describe(route, record.name) for route in record.routes)
    return JSONResponse({"routes": routes})


PLATFORM_ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/health/live", health_live, methods=["GET"]),
    Route("/health/ready", health_ready, methods=["GET"]),
    Route("/platform/status", platform_status, methods=["GET"]),
    Route("/platform/plugins", list_plugins, methods=["GET"]),
    Route("/platform/plugins/{name}", show_plugin, methods=["GET"]),
    Route("/platform/plugins/{name}/{action}", plugin_action, methods=["POST"]),
    Route("/platform/routes", list_routes, methods=["GET"]),
    *OPENAPI_ROUTES,
    *METRICS_ROUTES,
    Route("/platform/events", events_api.list_events, methods=["GET"]),
    Route("/platform/events", requires(ADMIN_PERMISSION)(events_api.emit_event), methods=["POST"]),
    Route("/platform/events/stream", events_api.stream_events, methods=["GET"]),
    Route("/platform/config", config_api.show_config, methods=["GET"]),
    Route("/platform/config/{key}", config_api.show_config_key, methods=["GET"]),
    # Management endpoint: changes the running configuration.
    Route("/platform/config/{key}", config_api.set_config_key, methods=["PUT"]),
    *AUTH_ROUTES,
    *AI_ROUTES,
    *SERVICE_ROUTES,
]


def reserved_claims() -> list[tuple[str, str]]:
    """Paths the platform itself answers; a plugin claiming one is refused."""
    claims = [claim for route in PLATFORM_ROUTES for claim in route_claims(route)]
    return [*claims, ("/platform/{path:path}", "*"), ("/health/{path:path}", "*")]
