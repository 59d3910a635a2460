"""Loopback servers that speak the wire protocols of OpenAI and Anthropic, for the AI tests.

A real uvicorn server on a free port, in a thread. Every request is recorded (method, path,
headers, body); answers follow the providers' documented shapes, and a test can queue
scripted answers (an error status with headers, a delay, a given body) per path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import attrs
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.helpers import free_port


@attrs.define
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class Scripted:
    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = attrs.Factory(dict)
    delay: float = 0.0
    sse: list[str] | None = None  # raw SSE text blocks, sent as they are


class FakeAI:
    """The state behind the app: what was asked, what to answer next."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.scripts: dict[str, deque[Scripted]] = {}
        self.url = ""

    def reset(self) -> None:
        self.requests.clear()
        self.scripts.clear()

    def queue(self, path: str, *answers: Scripted) -> None:
        self.scripts.setdefault(path, deque()).extend(answers)

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    # -- the app ---------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        seen = Seen(request.method, request.url.path, dict(request.headers), body)
        self.requests.append(seen)
        script = self.scripts.get(seen.path)
        if script:
            answer = script.popleft()
            if answer.delay:
                await asyncio.sleep(answer.delay)
            if answer.sse is not None:
                return _sse(answer.sse, answer.status)
            if answer.body is not None:
                return Response(answer.body, answer.status, headers=answer.headers)
            return JSONResponse(answer.json, answer.status, headers=answer.headers)
        return self.default(seen)

    def default(self, seen: Seen) -> Response:
        path = seen.path
        if path.endswith("/chat/completions"):
            return openai_chat(seen.json)
        if path.endswith("/embeddings"):
            return openai_embeddings(seen.json)
        if path.endswith("/audio/transcriptions"):
            return JSONResponse({"text": "the pump in building 3 is leaking oil badly"})
        if path.endswith("/messages"):
            return anthropic_messages(seen.json)
        return JSONResponse({"error": {"message": f"no route {path}"}}, 404)


def last_user_text(body: dict[str, Any]) -> str:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if part.get("type") == "text")
    return str(content)


def openai_chat(body: dict[str, Any]) -> Response:
    text = f"echo: {last_user_text(body)}"
    model = body["model"]
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": "chatcmpl-123",
                "object": "chat.completion",
                "created": 1700000000,
                "model": f"{model}-2024-07-18",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }
        )
    blocks = [
        _chunk(model, {"role": "assistant", "content": ""}, None),
        *(_chunk(model, {"content": word}, None) for word in _words(text)),
        _chunk(model, {}, "stop"),
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        blocks.append(
            "data: "
            + json.dumps(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
            + "\n\n"
        )
    blocks.append("data: [DONE]\n\n")
    return _sse(blocks)


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + (" " if i < len(parts) - 1 else "") for i, p in enumerate(parts)]


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> str:
    payload = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload)}\n\n"


def openai_embeddings(body: dict[str, Any]) -> Response:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    rows = [
        {"object": "embedding", "index": i, "embedding": [float(len(text)), float(i), 0.5]}
        for i, text in enumerate(inputs)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": list(reversed(rows)),  # order by "index", not by position
            "model": body["model"],
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
    )


def anthropic_messages(body: dict[str, Any]) -> Response:
    text = f"echo: {last_user_text(body)}"
    model = body["model"]
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 6},
            }
        )
    return _sse(anthropic_stream(model, _words(text)))


def anthropic_stream(model: str, pieces: list[str], stop: str = "end_turn") -> list[str]:
    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    return [
        event("message_start", {"type": "message_start", "message": message}),
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        event("ping", {"type": "ping"}),
        *(
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            for piece in pieces
        ),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 6},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]


def _sse(blocks: list[str], status: int = 200) -> StreamingResponse:
    async def body() -> Any:
        for block in blocks:
            yield block

    return StreamingResponse(body(), status_code=status, media_type="text/event-stream")


@contextlib.contextmanager
def serve_fake_ai() -> Iterator[FakeAI]:
    """Run the fake server in a thread until the block ends."""
    fake = FakeAI()
    app = Starlette(routes=[Route("/{path:path}", fake.handle, methods=["GET", "POST"])])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake AI server did not start")
        time.sleep(0.01)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=10)
