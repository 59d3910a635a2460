"""Service discovery: the registry of service instances, health checks, load balancing.

See :class:`~chatterfix.services.discovery.service.ServiceDiscovery` (``platform.discovery``).
"""

from __future__ import annotations

from chatterfix.services.discovery.model import (
    STRATEGIES,
    Instance,
    RegistrationError,
    Service,
)
from chatterfix.services.discovery.service import DiscoverySettings, ServiceDiscovery
from chatterfix.services.discovery.store import RegistryUnavailable

__all__ = [
    "STRATEGIES",
    "DiscoverySettings",
    "Instance",
    "RegistrationError",
    "RegistryUnavailable",
    "Service",
    "ServiceDiscovery",
]
