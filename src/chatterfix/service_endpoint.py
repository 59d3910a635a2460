"""``ServiceEndpoint``: one instance of a service the gateway can route to."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class ServiceEndpoint:
    """A service instance as the seed registers it: ``ServiceEndpoint(name=, url=, port=)``.

    ``await platform.discovery.register_service(endpoint)`` registers it; ``port`` is added to
    a ``url`` without one; ``strip_prefix`` makes the gateway forward ``/api/{name}/x`` as
    ``/x``.
    """

    name: str
    url: str
    port: int | None = None
    health_endpoint: str = "/health"
    weight: int = 1
    strip_prefix: bool = False
    metadata: dict[str, str] = attrs.field(factory=dict)
