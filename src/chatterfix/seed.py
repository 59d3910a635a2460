"""The names the original platform document imports from ``platform.core``.

``plugin_registry``, ``shared_services``, ``event_system``, ``service_discovery`` and
``config_manager`` are thin proxies: each attribute access is forwarded to the platform that
is running (the one serving the current request or hook, else the one entered last). They
are the only module-level objects that refer to a platform.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatterfix.context import current_platform

if TYPE_CHECKING:
    from chatterfix.platform import Platform

# Platforms entered with ``async with`` and not yet exited, most recent last: what the
# proxies resolve to outside a request or hook (inside one, the context variable names the
# platform exactly). With the proxies below, the only module-level state of the package.
_entered: list[Platform] = []


def enter_platform(platform: Platform) -> None:
    _entered.append(platform)


def leave_platform(platform: Platform) -> None:
    if platform in _entered:
        _entered.remove(platform)


def active_platform() -> Platform:
    platform = current_platform.get()
    if platform is not None:
        return platform
    if _entered:
        return _entered[-1]
    raise RuntimeError(
        "no ChatterFix platform is running: start one with `chatterfix start`, "
        "`async with Platform(...)`, or the chatterfix_platform pytest fixture"
    )


class _Proxy:
    def __init__(self, label: str, resolve: Callable[[Any], Any]) -> None:
        object.__setattr__(self, "_label", label)
        object.__setattr__(self, "_resolve", resolve)

    def _target(self) -> Any:
        return self._resolve(active_platform())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)  # copy, pickle and hasattr probes: not the platform's
        return getattr(self._target(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target(), name, value)

    def __repr__(self) -> str:
        return f"<chatterfix.{self._label} proxy>"


class SharedServices:
    """The seed's ``shared_services``: database, auth, ai, config and loggers."""

    def __init__(self, platform: Any) -> None:
        self._platform = platform

    @property
    def database(self) -> Any:
        return self._platform.database

    @property
    def auth(self) -> Any:
        return self._platform.auth

    @property
    def ai(self) -> Any:
        return self._platform.ai

    @property
    def config(self) -> Any:
        return self._platform.config

    @property
    def events(self) -> Any:
        return self._platform.events

    def get_logger(self, name: str) -> logging.Logger:
        logger: logging.Logger = self._platform.get_logger(name)
        return logger


plugin_registry: Any = _Proxy("plugin_registry", lambda platform: platform.plugins)
shared_services: Any = _Proxy("shared_services", SharedServices)
event_system: Any = _Proxy("event_system", lambda platform: platform.events)
service_discovery: Any = _Proxy("service_discovery", lambda platform: platform.discovery)
config_manager: Any = _Proxy("config_manager", lambda platform: platform.config)
