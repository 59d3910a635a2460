"""``ServiceEndpoint``: one instance of a service the gateway can route to."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class ServiceEndpoint:
    """A service instance as the seed registers it: ``ServiceEndpoint(name=, url=, port=)``."""

    name: str
    url: str
    port: int | None = None
    health_endpoint: str = "/health"
    weight: int = 1
    metadata: dict[str, str] = attrs.field(factory=dict)
