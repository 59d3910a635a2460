"""The upstream of ``proxy.py``: a JSON hello on every path, and large bodies on ``.../big``.

A plain ASGI function (no framework), so that the upstream costs as little as possible and
the figures show what the proxies in front of it cost.

* ``GET <any path>``: ``{"message": "Hello, World!"}`` with a Content-Length;
* ``GET .../big?bytes=N``: ``N`` bytes (default 1 GiB) in 64 KiB chunks, chunked encoding.

Run: ``python -m uvicorn --app-dir bench proxy_upstream:app``.
"""

from __future__ import annotations

from typing import Any

BODY = b'{"message":"Hello, World!"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
CHUNK = b"x" * 65536
GIB = 1 << 30


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"].endswith("/big"):
        await big(scope, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def big(scope: dict[str, Any], send: Any) -> None:
    query = scope["query_string"].decode()
    size = GIB
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "bytes" and value.isdigit():
            size = int(value)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    left = size
    while left > 0:
        chunk = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        left -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
