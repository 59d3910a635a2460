"""The baseline of ``proxy.py``: a minimal reverse proxy, Starlette on an aiohttp client.

What anyone would write in a few lines: one route catching every path, one shared aiohttp
session, the request streamed up, the response streamed back (``StreamingResponse``), the
hop-by-hop headers dropped both ways. No service discovery, load balancing, health checks,
forwarding headers, retries or metrics.

Run: ``UPSTREAM=http://127.0.0.1:PORT python -m uvicorn --app-dir bench minimal_proxy:app``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:8001")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=128)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        yield {"session": session}


async def proxy(request: Request) -> StreamingResponse:
    session: aiohttp.ClientSession = request.state.session
    url = UPSTREAM + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
    has_body = request.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in request.headers
    )
    response = await session.request(
        request.method,
        url,
        headers=headers,
        data=request.stream() if has_body else None,
        allow_redirects=False,
    )
    return StreamingResponse(
        response.content.iter_any(),
        status_code=response.status,
        headers={k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP},
        background=BackgroundTask(response.release),
    )


app = Starlette(routes=[Route("/{path:path}", proxy, methods=METHODS)], lifespan=lifespan)
