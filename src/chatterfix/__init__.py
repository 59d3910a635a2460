"""ChatterFix: a plugin platform for AI-powered CMMS apps.

The public face. Light to import (the command line imports it): the platform, the gateway
and the plugin registry load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatterfix.events.catalog import SystemEvents
from chatterfix.hookspecs import hookimpl, hookspec
from chatterfix.seed import (
    config_manager,
    event_system,
    plugin_registry,
    service_discovery,
    shared_services,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from chatterfix.config import Config
    from chatterfix.events.bus import EventBus
    from chatterfix.events.model import Event, EventError
    from chatterfix.gateway.errors import APIError
    from chatterfix.manifest import ManifestError, PluginManifest
    from chatterfix.permissions import current_user, requires
    from chatterfix.platform import Platform, ServiceNotAvailable
    from chatterfix.plugins import PluginState
    from chatterfix.route_options import max_body, openapi, rate_limit
    from chatterfix.service_endpoint import ServiceEndpoint
    from chatterfix.services.auth import User

_LAZY = {
    "Platform": "chatterfix.platform",
    "ServiceNotAvailable": "chatterfix.platform",
    "Config": "chatterfix.config",
    "Event": "chatterfix.events.model",
    "EventError": "chatterfix.events.model",
    "EventBus": "chatterfix.events.bus",
    "APIError": "chatterfix.gateway.errors",
    "PluginManifest": "chatterfix.manifest",
    "ManifestError": "chatterfix.manifest",
    "PluginState": "chatterfix.plugins",
    "ServiceEndpoint": "chatterfix.service_endpoint",
    "requires": "chatterfix.permissions",
    "current_user": "chatterfix.permissions",
    "rate_limit": "chatterfix.route_options",
    "max_body": "chatterfix.route_options",
    "openapi": "chatterfix.route_options",
    "User": "chatterfix.services.auth",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'chatterfix' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


__all__ = [
    "APIError",
    "Config",
    "Event",
    "EventBus",
    "EventError",
    "ManifestError",
    "Platform",
    "PluginManifest",
    "PluginState",
    "ServiceEndpoint",
    "ServiceNotAvailable",
    "SystemEvents",
    "User",
    "__version__",
    "config_manager",
    "current_user",
    "event_system",
    "hookimpl",
    "hookspec",
    "max_body",
    "openapi",
    "plugin_registry",
    "rate_limit",
    "requires",
    "service_discovery",
    "shared_services",
]
