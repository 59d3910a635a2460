"""``/platform/services``: list, register (and renew), heartbeat and deregister service
instances. Changes need the ``platform.admin`` permission; apps running on their own send
the administrator's token they were given (``CHATTERFIX_TOKEN``)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chatterfix.gateway.bodies import json_object
from chatterfix.gateway.errors import APIError
from chatterfix.gateway.routing import platform_of
from chatterfix.permissions import ADMIN_PERMISSION, requires
from chatterfix.services.discovery import RegistrationError

REGISTER_FIELDS = {
    "name",
    "url",
    "port",
    "health_endpoint",
    "weight",
    "metadata",
    "ttl",
    "strip_prefix",
}
MAX_BODY = 64 * 1024


async def list_services(request: Request) -> Response:
    discovery = platform_of(request).discovery
    return JSONResponse(
        {
            "services": discovery.services(),
            "backend": "redis" if discovery.shared else "memory",
        }
    )


async def show_service(request: Request) -> Response:
    name = request.path_params["name"]
    service = platform_of(request).discovery.services().get(name)
    if service is None:
        raise APIError(404, f"no service {name!r} is registered", "service_not_found", service=name)
    return JSONResponse(service)


@requires(ADMIN_PERMISSION)
async def register_service(request: Request) -> Response:
    """Register an instance, or renew its registration (the same name and URL again)."""
    fields = await json_object(request, REGISTER_FIELDS, max_bytes=MAX_BODY, status=422)
    for required in ("name", "url"):
        if required not in fields:
            raise APIError(422, f"{required!r} is required", "invalid_registration", field=required)
    discovery = platform_of(request).discovery
    try:
        instance, created = await discovery.register(
            fields["name"],
            fields["url"],
            port=fields.get("port"),
            health_endpoint=fields.get("health_endpoint", "/health"),
            weight=fields.get("weight", 1),
            metadata=fields.get("metadata"),
            ttl=fields.get("ttl"),
            strip_prefix=fields.get("strip_prefix", False),
            source="api",
        )
    except RegistrationError as exc:
        raise APIError(422, str(exc), "invalid_registration", field=exc.field) from None
    return JSONResponse(
        {"registered": True, "created": created, "instance": instance.describe(time.time())},
        status_code=201 if created else 200,
    )


@requires(ADMIN_PERMISSION)
async def heartbeat(request: Request) -> Response:
    """Renew an instance's time-to-live (``?url=``, or ``{"url": ...}``); 404 when it is
    not registered (any more): register again."""
    name = request.path_params["name"]
    url = request.query_params.get("url")
    if url is None:
        fields = await json_object(request, {"url"}, max_bytes=MAX_BODY, status=422)
        url = fields.get("url")
    if not isinstance(url, str) or not url:
        raise APIError(422, "the instance's 'url' is required", "invalid_heartbeat", field="url")
    instance = await platform_of(request).discovery.heartbeat(name, url)
    if instance is None:
        raise APIError(
            404,
            f"service {name!r} has no instance at {url}: register it again",
            "service_not_registered",
            service=name,
        )
    return JSONResponse({"renewed": True, "instance": instance.describe(time.time())})


@requires(ADMIN_PERMISSION)
async def deregister_service(request: Request) -> Response:
    """Remove the instance at ``?url=``, or every instance of the service."""
    name = request.path_params["name"]
    url = request.query_params.get("url")
    removed = await platform_of(request).discovery.deregister(name, url)
    if not removed:
        where = f" at {url}" if url else ""
        raise APIError(
            404,
            f"no instance of service {name!r}{where} is registered over the API",
            "service_not_found",
            service=name,
        )
    return JSONResponse({"deregistered": [instance.url for instance in removed], "service": name})


SERVICE_ROUTES = [
    Route("/platform/services", list_services, methods=["GET"]),
    Route("/platform/services", register_service, methods=["POST"]),
    Route("/platform/services/{name}", show_service, methods=["GET"]),
    Route("/platform/services/{name}", deregister_service, methods=["DELETE"]),
    Route("/platform/services/{name}/heartbeat", heartbeat, methods=["POST"]),
]
