"""``GET /openapi.json`` and ``GET /docs``: the gateway's routes as an OpenAPI document, and
Swagger UI served from the ``swagger-ui-bundle`` package (no CDN).

The document is built from the routes of one routing generation (the platform's and the
running plugins') the first time it is asked for, and kept with that generation: a plugin
starting, stopping or reloading makes the next request build it anew.

What an operation says, and where it comes from:

- path parameters and their types: the route's template (``{id:int}`` is an integer);
- tag: the plugin that owns the route (``platform`` for the platform's own);
- summary and description: the endpoint's docstring (first line, then the rest), unless
  :func:`chatterfix.openapi` says otherwise;
- security: a bearer token, and ``x-permission``, for endpoints decorated with
  :func:`chatterfix.requires`;
- error responses: the JSON error body, with the statuses the pipeline may answer;
- anything else: :func:`chatterfix.openapi` (request body, responses, query parameters...),
  merged over what was generated.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.convertors import FloatConvertor, IntegerConvertor, PathConvertor, UUIDConvertor
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route

from chatterfix.context import serving_routing
from chatterfix.gateway.errors import APIError
from chatterfix.gateway.routing import platform_of
from chatterfix.permissions import REQUIRED_PERMISSION_ATTRIBUTE
from chatterfix.route_options import (
    MAX_BODY_ATTRIBUTE,
    OPENAPI_ATTRIBUTE,
    RATE_LIMIT_ATTRIBUTE,
    openapi,
    rate_limit,
)

if TYPE_CHECKING:
    from chatterfix.platform import Platform

OPENAPI_VERSION = "3.0.3"  # what the bundled Swagger UI renders
HTTP_METHODS = ("get", "put", "post", "delete", "options", "patch")
BODY_METHODS = frozenset({"post", "put", "patch"})
ERROR_REF = {"$ref": "#/components/responses/Error"}
PLATFORM_TAG = "platform"
EXCLUDE = "x-chatterfix-exclude"
_CONVERTOR = re.compile(r"{([^:}]+):[^}]+}")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "A stable, machine-readable name"},
                "message": {"type": "string"},
                "request_id": {"type": "string", "nullable": True},
            },
        }
    },
}

_OBJECT = {"type": "object"}
_STRING = {"type": "string"}

# What the platform's own endpoints take, beyond what their docstrings say.
PLATFORM_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/platform/events", "get"): {
        "parameters": [
            {"name": "type", "in": "query", "schema": _STRING, "description": "a wildcard"},
            {"name": "source", "in": "query", "schema": _STRING},
            {"name": "correlation_id", "in": "query", "schema": _STRING},
            {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
        ]
    },
    ("/platform/events", "post"): {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": _STRING,
                            "data": _OBJECT,
                            "source": _STRING,
                            "correlation_id": _STRING,
                            "priority": {"type": "integer"},
                        },
                    }
                }
            },
        }
    },
    ("/platform/events/stream", "get"): {
        "responses": {
            "200": {"description": "Server-Sent Events", "content": {"text/event-stream": {}}}
        }
    },
    ("/platform/config/{key}", "put"): {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"value": {}, "text": _STRING},
                        "description": "either 'value' (any JSON) or 'text'",
                    }
                }
            },
        }
    },
    ("/platform/auth/login", "post"): {
        "summary": "Log in with a user name and password; answers a new API token",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["username", "password"],
                        "properties": {"username": _STRING, "password": _STRING},
                    }
                }
            },
        },
    },
}


# -- the document --------------------------------------------------------------------------


def build_document(platform: Platform) -> dict[str, Any]:
    """The OpenAPI document of the routes the platform serves now."""
    from chatterfix.gateway.api import PLATFORM_ROUTES

    # Plugin routes first, as the router tries them.
    owned: list[tuple[str, Any]] = []
    tags = []
    for record in platform.plugins.running():
        tags.append({"name": record.name, "description": record.manifest.description or ""})
        owned.extend((record.name, route) for route in record.routes)
    tags.append({"name": PLATFORM_TAG, "description": "The platform's own endpoints"})
    owned.extend((PLATFORM_TAG, route) for route in PLATFORM_ROUTES)
    context = _Context(platform)
    paths: dict[str, dict[str, Any]] = {}
    for owner, route in owned:
        for path, method, endpoint, params in _operations(route, "", {}):
            operation = context.operation(owner, path, method, endpoint, params)
            if operation is not None:
                paths.setdefault(path, {}).setdefault(method, operation)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": platform.name,
            "version": platform.version,
            "description": "The ChatterFix gateway: the platform's endpoints and the running "
            "plugins' routes. Errors are JSON: "
            '`{"error": {"code", "message", "request_id"}}`.',
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A ChatterFix API token: 'Authorization: Bearer cfx_...'",
                }
            },
            "schemas": {"Error": copy.deepcopy(ERROR_SCHEMA)},
            "responses": {
                "Error": {
                    "description": "A JSON error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
        },
    }


_Operation = tuple[str, str, Any, dict[str, dict[str, Any]]]


def _operations(route: Any, prefix: str, params: dict[str, dict[str, Any]]) -> Iterator[_Operation]:
    """``(path, method, endpoint function, path parameters)`` for each operation of a route;
    routes inside mounts with their full path."""
    if isinstance(route, Route):
        if not route.include_in_schema:
            return
        path, found = _template(prefix + route.path, route.param_convertors, params)
        endpoint = route.endpoint
        if inspect.isfunction(endpoint) or inspect.ismethod(endpoint):
            methods = sorted((route.methods or {"GET"}) - {"HEAD"})
            for method in methods:
                yield path, method.lower(), endpoint, found
        else:  # an endpoint class: one operation per method it defines
            allowed = {m.lower() for m in route.methods} if route.methods else set(HTTP_METHODS)
            for method in HTTP_METHODS:
                function = getattr(endpoint, method, None)
                if function is not None and method in allowed:
                    yield path, method, function, found
    elif isinstance(route, Mount):
        path, found = _template(prefix + route.path, route.param_convertors, params)
        inner = route.routes
        if inner:
            for child in inner:
                yield from _operations(child, path, found)
        else:  # an application of its own: all we know is its prefix
            found = {**found, "path": {"type": "string"}}
            yield path.rstrip("/") + "/{path}", "get", route.app, found


def _template(
    path: str, convertors: dict[str, Any], params: dict[str, dict[str, Any]]
) -> tuple[str, dict[str, dict[str, Any]]]:
    """``/items/{id:int}`` as ``/items/{id}``, with the parameters' schemas."""
    found = dict(params)
    for name, convertor in convertors.items():
        found[name] = _schema_of(convertor)
    return _CONVERTOR.sub(r"{\1}", path), found


def _schema_of(convertor: Any) -> dict[str, Any]:
    if isinstance(convertor, IntegerConvertor):
        return {"type": "integer", "minimum": 0}
    if isinstance(convertor, FloatConvertor):
        return {"type": "number", "minimum": 0}
    if isinstance(convertor, UUIDConvertor):
        return {"type": "string", "format": "uuid"}
    if isinstance(convertor, PathConvertor):
        return {"type": "string"}
    return {"type": "string", "pattern": "^[^/]+$"}


class _Context:
    """What every operation of one document shares."""

    def __init__(self, platform: Platform) -> None:
        from chatterfix.gateway.pipeline import default_limit

        config = platform.config
        order = list(config.get("gateway.middleware") or [])
        self.body_limit = "body_limit" in order and bool(config.get("gateway.max_body_bytes"))
        self.rate_limit = default_limit(platform) if "rate_limit" in order else None
        self.rate_limiting = "rate_limit" in order
        self.auth = bool(config.get("auth.enabled"))
        self.ids: set[str] = set()

    def operation(
        self,
        owner: str,
        path: str,
        method: str,
        endpoint: Any,
        params: dict[str, dict[str, Any]],
    ) -> dict[str, Any] | None:
        extra = dict(getattr(endpoint, OPENAPI_ATTRIBUTE, None) or {})
        if owner == PLATFORM_TAG:
            extra = {**PLATFORM_OPERATIONS.get((path, method), {}), **extra}
        if extra.pop(EXCLUDE, False):
            return None
        summary, description = _docstring(endpoint)
        operation: dict[str, Any] = {"tags": [owner], "operationId": self._id(owner, endpoint)}
        if summary:
            operation["summary"] = summary
        if description:
            operation["description"] = description
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": schema}
            for name, schema in params.items()
        ]
        responses: dict[str, Any] = {"2XX": {"description": "Success"}}
        if params:
            responses["404"] = ERROR_REF
        permission = getattr(endpoint, REQUIRED_PERMISSION_ATTRIBUTE, None)
        if permission is not None:
            operation["security"] = [{"bearerAuth": []}]
            operation["x-permission"] = permission
            note = f"Requires an API token holding permission `{permission}`."
            operation["description"] = f"{description}\n\n{note}".strip()
            if self.auth:
                responses["401"] = ERROR_REF
                responses["403"] = ERROR_REF
        if method in BODY_METHODS and (
            self.body_limit or getattr(endpoint, MAX_BODY_ATTRIBUTE, None)
        ):
            responses["413"] = ERROR_REF
        limit = getattr(endpoint, RATE_LIMIT_ATTRIBUTE, self.rate_limit)
        if limit is not None and self.rate_limiting:
            responses["429"] = ERROR_REF
            operation["x-rate-limit"] = str(limit)
        responses["4XX"] = ERROR_REF
        responses["5XX"] = ERROR_REF
        given = extra.pop("responses", None) or {}
        if any(status.startswith("2") for status in given):
            responses.pop("2XX")
        responses.update(given)
        operation["responses"] = responses
        given_parameters = extra.pop("parameters", None) or []
        if given_parameters:
            keys = {(p.get("name"), p.get("in")) for p in given_parameters}
            operation["parameters"] = [
                p for p in operation["parameters"] if (p["name"], p["in"]) not in keys
            ] + given_parameters
        if not operation["parameters"]:
            del operation["parameters"]
        operation.update(copy.deepcopy(extra))
        return operation

    def _id(self, owner: str, endpoint: Any) -> str:
        name = getattr(endpoint, "__name__", None) or type(endpoint).__name__
        base = f"{owner}.{name}"
        candidate, number = base, 1
        while candidate in self.ids:
            number += 1
            candidate = f"{base}_{number}"
        self.ids.add(candidate)
        return candidate


def _docstring(endpoint: Any) -> tuple[str, str]:
    doc = inspect.getdoc(endpoint) if callable(endpoint) else None
    if not doc:
        return "", ""
    first, _, rest = doc.partition("\n\n")
    return " ".join(first.split()), rest.strip()


def document_for(request: Request) -> tuple[dict[str, Any], bytes]:
    """The document of the routing generation serving ``request``, and its JSON (built once
    per generation)."""
    cache: dict[str, Any] | None = getattr(serving_routing.get(), "cache", None)
    found = cache.get("openapi") if cache is not None else None
    if found is None:
        document = build_document(platform_of(request))
        found = (document, json.dumps(document).encode())
        if cache is not None:
            cache["openapi"] = found
    return found


# -- endpoints -----------------------------------------------------------------------------


@rate_limit(None)
@openapi(summary="This document", responses={200: {"description": "OpenAPI 3.0 document"}})
async def openapi_json(request: Request) -> Response:
    return Response(document_for(request)[1], media_type="application/json")


DOCS_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui.css.map": "application/json",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-bundle.js.map": "application/json",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
INIT_SCRIPT = """\
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""
# The page loads nothing from anywhere but the gateway; the browser is told so too.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'self'"
)
DOCS_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API</title>
<link rel="stylesheet" href="{root}/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="{root}/docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{root}/openapi.json"></div>
<script src="{root}/docs/swagger-ui-bundle.js"></script>
<script src="{root}/docs/swagger-ui-init.js"></script>
</body>
</html>
"""


def swagger_ui_folder() -> Path:
    try:
        bundle = importlib.import_module("swagger_ui_bundle")
    except ImportError:  # pragma: no cover - a dependency of chatterfix
        raise APIError(
            503,
            "Swagger UI is not installed: pip install swagger-ui-bundle",
            "docs_unavailable",
        ) from None
    return Path(str(bundle.swagger_ui_path))


@rate_limit(None)
@openapi(
    summary="Swagger UI for this document",
    responses={200: {"description": "HTML page", "content": {"text/html": {}}}},
)
async def docs_page(request: Request) -> Response:
    from html import escape

    swagger_ui_folder()
    root = escape(str(request.scope.get("root_path", "")).rstrip("/"))
    page = DOCS_PAGE.format(title=escape(platform_of(request).name), root=root)
    return HTMLResponse(page, headers={"Content-Security-Policy": DOCS_CSP})


@rate_limit(None)
@openapi(include=False)
async def docs_asset(request: Request) -> Response:
    name = request.path_params["asset"]
    cache = {"Cache-Control": "public, max-age=86400"}
    if name == "swagger-ui-init.js":
        return Response(INIT_SCRIPT, media_type="text/javascript", headers=cache)
    media_type = DOCS_ASSETS.get(name)
    if media_type is None:
        raise APIError(404, f"no documentation asset {name!r}")
    return FileResponse(swagger_ui_folder() / name, media_type=media_type, headers=cache)


OPENAPI_ROUTES = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
    Route("/docs/{asset}", docs_asset, methods=["GET"]),
]


def paths_of(document: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """``(method, path)`` of every operation of a document (for tests and tools)."""
    for path, item in document.get("paths", {}).items():
        for method in item:
            yield method.upper(), path
