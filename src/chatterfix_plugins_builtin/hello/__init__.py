"""``hello``: the smallest complete plugin — a route, a health check, a lifecycle.

Read it as a template: everything here goes through the public ``chatterfix`` API.
"""

from __future__ import annotations

from typing import Any

import chatterfix


@chatterfix.hookimpl
def register_routes(platform: chatterfix.Platform) -> list[Any]:
    # Starlette is imported here, not at module level, so `chatterfix --help` stays fast.
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def greet(request: Request) -> JSONResponse:
        name = request.path_params.get("name", "world")
        greeting = platform.config.get("hello.greeting", "Hello")
        return JSONResponse({"message": f"{greeting}, {name}!", "plugin": "hello"})

    return [
        Route("/api/hello", greet, methods=["GET"]),
        Route("/api/hello/{name}", greet, methods=["GET"]),
    ]


@chatterfix.hookimpl
def config_schema() -> dict[str, Any]:
    return {
        "greeting": {
            "type": "string",
            "default": "Hello",
            "description": "Word the hello route greets with",
        }
    }


@chatterfix.hookimpl
def health_check(platform: chatterfix.Platform) -> dict[str, Any]:
    return {"status": "healthy", "greeting": platform.config.get("hello.greeting")}
