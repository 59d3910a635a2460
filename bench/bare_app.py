"""The ``hello`` plugin's handler in a bare Starlette app: the baseline of ``gateway_rps.py``.

The handler body is the plugin's, except that the greeting is a constant here where the
plugin reads ``hello.greeting`` from the platform configuration.

Run: ``python -m uvicorn --app-dir bench bare_app:app``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

GREETING = "Hello"


async def greet(request: Request) -> JSONResponse:
    name = request.path_params.get("name", "world")
    greeting = GREETING
    return JSONResponse({"message": f"{greeting}, {name}!", "plugin": "hello"})


app = Starlette(
    routes=[
        Route("/api/hello", greet, methods=["GET"]),
        Route("/api/hello/{name}", greet, methods=["GET"]),
    ]
)
