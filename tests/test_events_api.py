"""``/platform/events``: history, emit with validation, and the live SSE stream."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatterfix import Platform
from tests.helpers import admin_headers, gateway

pytestmark = pytest.mark.anyio


@pytest.fixture
def platform() -> Platform:
    return Platform(load_entrypoints=False, builtins=False)


async def test_emit_and_read_back(platform: Platform, serve: Any) -> None:
    async with serve(platform) as client:
        created = await client.post(
            "/platform/events",
            json={
                "type": "cmms.work_order.created",
                "data": {"work_order_id": 5, "title": "Fix pump"},
                "source": "remote_app",
            },
            headers={"X-Request-ID": "req-77"},
        )
        await client.post("/platform/events", json={"type": "cmms.asset.updated", "data": {}})
        work_orders = (await client.get("/platform/events?type=cmms.work_order.*")).json()
        by_request = (await client.get("/platform/events?correlation_id=req-77")).json()
        newest = (await client.get("/platform/events?limit=1")).json()
        # A time without a zone is UTC.
        since_2020 = (await client.get("/platform/events?since=2020-01-01T00:00:00")).json()
        until_2020 = (await client.get("/platform/events?until=2020-01-01T00:00:00")).json()
    assert created.status_code == 201
    envelope = created.json()
    assert envelope["specversion"] == "1.0"
    assert envelope["source"] == "remote_app"
    assert envelope["correlationid"] == "req-77"
    assert [e["id"] for e in work_orders["events"]] == [envelope["id"]]
    assert [e["data"]["title"] for e in by_request["events"]] == ["Fix pump"]
    assert [e["type"] for e in newest["events"]] == ["cmms.asset.updated"]
    assert {e["type"] for e in since_2020["events"]} >= {
        "cmms.work_order.created",
        "cmms.asset.updated",
    }
    assert until_2020["events"] == []
    assert platform.events.history[0].data == {"work_order_id": 5, "title": "Fix pump"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({"data": {}}).encode(), "field 'type' is required"),
        (json.dumps({"type": "a b"}).encode(), "not a dotted name"),
        (json.dumps({"type": "a.b", "data": [1]}).encode(), "must be a JSON object (a dict)"),
        (json.dumps({"type": "a.b", "colour": "red"}).encode(), "unknown field(s) colour"),
        (json.dumps({"type": "a.b", "priority": "high"}).encode(), "'priority' must be a int"),
    ],
)
async def test_bad_emits_are_422_with_a_message(
    platform: Platform, serve: Any, body: bytes, words: str
) -> None:
    async with serve(platform) as client:
        response = await client.post("/platform/events", content=body)
    assert response.status_code == 422
    assert words in response.json()["error"]["message"]
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
    assert list(platform.events.history) == []


async def test_bad_queries_are_422(platform: Platform, serve: Any) -> None:
    async with serve(platform) as client:
        since = await client.get("/platform/events?since=yesterday")
        limit = await client.get("/platform/events?limit=0")
        pattern = await client.get("/platform/events?type=a%20b")
    assert [r.status_code for r in (since, limit, pattern)] == [422, 422, 422]
    assert "'since' is not an ISO 8601 date-time" in since.json()["error"]["message"]


async def test_oversized_emit_is_refused(serve: Any) -> None:
    platform = Platform(
        config={"events": {"max_payload_bytes": 100}}, load_entrypoints=False, builtins=False
    )
    async with serve(platform) as client:
        response = await client.post(
            "/platform/events", json={"type": "a.b", "data": {"blob": "x" * 200}}
        )
    assert response.status_code == 422
    assert "the limit is 100" in response.json()["error"]["message"]


def read_events(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    """Read ``count`` SSE events (id, event, data) from a streaming response."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if current:
                events.append(current)
                current = {}
            if len(events) == count:
                return events
            continue
        field, _, value = line.partition(": ")
        current[field] = json.loads(value) if field == "data" else value
    return events


@pytest.mark.slow
def test_stream_delivers_live_events_and_resumes(tmp_path: Path) -> None:
    with gateway(sys.executable, cwd=tmp_path) as url:

        def emit(event_type: str, number: int) -> str:
            reply = httpx.post(
                url + "/platform/events",
                json={"type": event_type, "data": {"n": number}},
                headers=admin_headers(tmp_path),
            )
            event_id: str = reply.json()["id"]
            return event_id

        with httpx.stream("GET", url + "/platform/events/stream?type=cmms.*", timeout=10) as stream:
            first = emit("cmms.work_order.created", 1)
            emit("other.thing", 2)
            emit("cmms.asset.updated", 3)
            live = read_events(stream, 2)
        assert live[0]["id"] == first
        assert [event["event"] for event in live] == [
            "cmms.work_order.created",
            "cmms.asset.updated",
        ]
        assert [event["data"]["data"]["n"] for event in live] == [1, 3]

        missed = emit("cmms.asset.updated", 4)
        headers = {"Last-Event-ID": live[-1]["id"]}
        with httpx.stream(
            "GET", url + "/platform/events/stream?type=cmms.*", headers=headers, timeout=10
        ) as stream:
            [resumed] = read_events(stream, 1)
        assert resumed["id"] == missed
