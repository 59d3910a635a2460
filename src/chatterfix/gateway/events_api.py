"""``/platform/events``: history with filters, emit from remote apps, a live SSE stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from chatterfix.events.model import Event, EventError, check_pattern, to_cloudevent
from chatterfix.gateway.bodies import json_object
from chatterfix.gateway.errors import APIError
from chatterfix.gateway.routing import platform_of

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STREAM_BUFFER = 1000  # events a slow stream reader may fall behind before it is cut off
KEEPALIVE_SECONDS = 15.0
RESUME_LIMIT = 10_000  # events a reconnecting stream reader gets back at most (the newest)
EMIT_FIELDS = {"type", "data", "source", "correlation_id", "priority"}


def _time(request: Request, name: str) -> datetime | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise APIError(
            422, f"query parameter {name!r} is not an ISO 8601 date-time: {value!r}"
        ) from None


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise APIError(422, f"query parameter 'limit' must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def _pattern(request: Request) -> str | None:
    pattern = request.query_params.get("type")
    if pattern is None:
        return None
    try:
        return check_pattern(pattern)
    except EventError as exc:
        raise APIError(422, str(exc)) from None


async def list_events(request: Request) -> Response:
    """The history, oldest first, as CloudEvents; filters: type (wildcards), source,
    correlation_id, since, until, limit (the newest ``limit``, default 100). From the shared
    database when the history is persisted."""
    events = await platform_of(request).events.query(
        _pattern(request),
        source=request.query_params.get("source"),
        correlation_id=request.query_params.get("correlation_id"),
        since=_time(request, "since"),
        until=_time(request, "until"),
        limit=_limit(request),
    )
    return JSONResponse({"events": [to_cloudevent(event) for event in events]})


async def emit_event(request: Request) -> Response:
    """Emit an event for a remote app: ``{"type", "data", "source", "correlation_id",
    "priority"}``. Answers 201 with the event as a CloudEvent, or 422 saying what is wrong."""
    bus = platform_of(request).events
    fields = _emit_fields(
        await json_object(
            request,
            EMIT_FIELDS,
            max_bytes=bus.max_payload_bytes + 4096,  # room for the envelope around data
            code="invalid_event",
            status=422,
        )
    )
    try:
        event = await bus.emit(
            fields["type"],
            fields.get("data", {}),
            source=str(fields.get("source", "")),
            correlation_id=fields.get("correlation_id"),
            priority=fields.get("priority", 0),
        )
    except EventError as exc:
        raise APIError(422, str(exc), "invalid_event") from None
    return JSONResponse(to_cloudevent(event), status_code=201)


def _emit_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if "type" not in fields:
        raise APIError(422, "field 'type' is required", "invalid_event")
    for name, kind in (("source", str), ("correlation_id", str), ("priority", int)):
        value = fields.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise APIError(422, f"field {name!r} must be a {kind.__name__}", "invalid_event")
    return fields


async def stream_events(request: Request) -> Response:
    """Server-Sent Events: every new event matching ``type`` (default all), each as a
    CloudEvent in ``data:`` with the event id as the SSE id. A client reconnecting with
    ``Last-Event-ID`` first gets what it missed, from the history."""
    platform = platform_of(request)
    pattern = _pattern(request) or "*"
    send, receive = anyio.create_memory_object_stream[Event](STREAM_BUFFER)

    def forward(event: Event) -> None:
        try:
            send.send_nowait(event)
        except anyio.WouldBlock:
            send.close()  # too slow: end the stream; the client resumes with Last-Event-ID
        except anyio.ClosedResourceError:
            pass

    owner = object()
    platform.events.subscribe(pattern, forward, owner=owner)
    last_id = request.headers.get("last-event-id")
    missed: list[Event] = []
    if last_id:
        try:
            # What it missed, oldest first (with the history persisted, also across a
            # restart); read after subscribing, so that nothing emitted meanwhile is lost.
            missed = await platform.events.query(pattern, after=last_id, limit=RESUME_LIMIT)
        except BaseException:
            platform.events.unsubscribe_owner(owner)
            raise
    sent_again = {event.id for event in missed}

    async def body() -> AsyncIterator[str]:
        try:
            yield ": connected\n\n"
            for event in missed:
                yield _sse(event)
            async with receive:
                while True:
                    with anyio.move_on_after(KEEPALIVE_SECONDS) as waited:
                        event = await receive.receive()
                    if waited.cancelled_caught:
                        yield ": keep-alive\n\n"
                    elif event.id not in sent_again:
                        yield _sse(event)
        except anyio.EndOfStream:
            return
        finally:
            platform.events.unsubscribe_owner(owner)
            send.close()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: Event) -> str:
    data = json.dumps(to_cloudevent(event), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"
