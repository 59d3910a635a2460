"""An upstream service for the proxy tests, run as its own uvicorn process:

    python tests/upstream_app.py PORT INSTANCE_ID

Every path is served both under ``/api/<any name>/`` and at the root (for ``strip_prefix``):

=====================  ======================================================================
``/health``            200, or 503 after ``POST /admin/sick`` (``POST /admin/well`` undoes it)
``/echo``              the request as JSON: instance, method, path, raw path, query, headers,
                       body length and SHA-256 (any method)
``/status/<code>``     answers that status
``/redirect``          302 to ``/api/elsewhere`` (a proxy must not follow it)
``/slow?seconds=``     waits, then answers
``/bytes?n=&chunk=``   ``n`` bytes in chunks of ``chunk`` (no Content-Length: chunked)
``/sized?n=``          ``n`` bytes with a Content-Length
``/upload``            reads the body as it comes: its length and SHA-256
``/sse?count=``        ``count`` Server-Sent Events, 50 ms apart
``/headers``           two Set-Cookie headers, a custom header, its own Server header
``/ws``                WebSocket echo (text and bytes), with the subprotocol offered first
=====================  ======================================================================
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


def build(instance: str) -> Starlette:
    state = {"sick": False}

    async def health(request: Request) -> Response:
        if state["sick"]:
            return JSONResponse({"status": "unhealthy"}, status_code=503)
        return JSONResponse({"status": "healthy", "instance": instance})

    async def admin(request: Request) -> Response:
        state["sick"] = request.path_params["what"] == "sick"
        return JSONResponse({"sick": state["sick"]})

    async def echo(request: Request) -> Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        headers: dict[str, list[str]] = {}
        for key, value in request.headers.raw:
            headers.setdefault(key.decode("latin-1"), []).append(value.decode("latin-1"))
        return JSONResponse(
            {
                "instance": instance,
                "method": request.method,
                "path": request.url.path,
                "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
                "query": request.scope["query_string"].decode("latin-1"),
                "headers": headers,
                "body_bytes": size,
                "body_sha256": digest.hexdigest(),
            }
        )

    async def status(request: Request) -> Response:
        code = int(request.path_params["code"])
        return JSONResponse({"status": code, "instance": instance}, status_code=code)

    async def redirect(request: Request) -> Response:
        return Response(status_code=302, headers={"Location": "/api/elsewhere"})

    async def slow(request: Request) -> Response:
        await anyio.sleep(float(request.query_params.get("seconds", "1")))
        return JSONResponse({"slow": True, "instance": instance})

    def pattern(n: int, chunk: int) -> Any:
        block = bytes(range(256)) * (chunk // 256 + 1)

        async def generate() -> Any:
            left = n
            while left > 0:
                size = min(chunk, left)
                left -= size
                yield block[:size]

        return generate()

    async def chunked(request: Request) -> Response:
        n = int(request.query_params.get("n", "1000"))
        chunk = int(request.query_params.get("chunk", "65536"))
        return StreamingResponse(pattern(n, chunk), media_type="application/octet-stream")

    async def sized(request: Request) -> Response:
        n = int(request.query_params.get("n", "1000"))
        chunk = 65536
        return StreamingResponse(
            pattern(n, chunk),
            media_type="application/octet-stream",
            headers={"Content-Length": str(n)},
        )

    async def upload(request: Request) -> Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return JSONResponse({"bytes": size, "sha256": digest.hexdigest(), "instance": instance})

    async def sse(request: Request) -> Response:
        count = int(request.query_params.get("count", "3"))

        async def events() -> Any:
            for index in range(count):
                yield f"id: {index}\nevent: tick\ndata: {instance} {index}\n\n".encode()
                await anyio.sleep(0.05)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def headers(request: Request) -> Response:
        response = PlainTextResponse("headers", headers={"X-Custom": "yes", "Server": "upstream"})
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response

    async def ws(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol=offered[0] if offered else None)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    if message["text"] == "close":
                        await websocket.close(code=4000)
                        return
                    await websocket.send_text(f"{instance}: {message['text']}")
                else:
                    await websocket.send_bytes(message.get("bytes") or b"")
        except WebSocketDisconnect:
            return

    handlers: list[tuple[str, Any, list[str] | None]] = [
        ("/health", health, ["GET"]),
        ("/admin/{what}", admin, ["POST"]),
        ("/echo", echo, None),
        ("/echo/{rest:path}", echo, None),
        ("/status/{code}", status, None),
        ("/redirect", redirect, ["GET"]),
        ("/slow", slow, ["GET"]),
        ("/bytes", chunked, ["GET"]),
        ("/sized", sized, ["GET"]),
        ("/upload", upload, ["POST", "PUT"]),
        ("/sse", sse, ["GET"]),
        ("/headers", headers, ["GET"]),
    ]
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes: list[Any] = []
    for prefix in ("", "/api/{app}"):
        for path, handler, allowed in handlers:
            routes.append(Route(prefix + path, handler, methods=allowed or methods))
        routes.append(WebSocketRoute(prefix + "/ws", ws))
    return Starlette(routes=routes)


if __name__ == "__main__":
    port, name = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(build(name), host="127.0.0.1", port=port, log_level="warning")
