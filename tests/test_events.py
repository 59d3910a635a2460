"""The in-process event bus: ordering, wildcards, retries, dead letters, validation, wire form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatterfix import Event, EventError, SystemEvents
from chatterfix.events import EventBus, RetryPolicy, from_cloudevent, to_cloudevent

pytestmark = pytest.mark.anyio


def quick_bus(**kwargs: Any) -> EventBus:
    return EventBus(retry=RetryPolicy(attempts=3, backoff=0.001), **kwargs)


async def test_priorities_wildcards_unsubscribe_and_decorator() -> None:
    bus = quick_bus()
    calls: list[str] = []

    @bus.subscribe(SystemEvents.WORK_ORDER_CREATED)
    def plain(event: Event) -> None:
        calls.append("plain")

    async def urgent(event: Event) -> None:
        calls.append("urgent")

    bus.subscribe("cmms.work_order.*", urgent, priority=10)
    bus.subscribe("*", lambda event: calls.append("everything"), priority=-1)
    bus.subscribe("cmms.asset.*", lambda event: calls.append("assets"))

    await bus.emit(SystemEvents.WORK_ORDER_CREATED, {"work_order_id": 1})
    assert calls == ["urgent", "plain", "everything"]
    assert bus.unsubscribe(SystemEvents.WORK_ORDER_CREATED, plain)
    calls.clear()
    await bus.emit(SystemEvents.WORK_ORDER_CREATED, {"work_order_id": 2})
    assert calls == ["urgent", "everything"]


async def test_handlers_emitting_carry_correlation_and_causation() -> None:
    bus = quick_bus()

    async def assign(event: Event) -> None:
        await bus.emit(SystemEvents.WORK_ORDER_ASSIGNED, {"work_order_id": 7})

    bus.subscribe(SystemEvents.WORK_ORDER_CREATED, assign)
    created = await bus.emit(
        SystemEvents.WORK_ORDER_CREATED, {"work_order_id": 7}, correlation_id="job-1"
    )
    assigned = bus.find(SystemEvents.WORK_ORDER_ASSIGNED)[0]
    assert assigned.correlation_id == "job-1"
    assert assigned.causation_id == created.id
    assert created.causation_id is None


async def test_a_flaky_handler_is_retried_until_it_succeeds() -> None:
    bus = quick_bus()
    tries: list[int] = []

    def flaky(event: Event) -> None:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("CMMS database busy")

    bus.subscribe("cmms.asset.updated", flaky)
    await bus.emit("cmms.asset.updated", {"asset_id": 3})
    assert len(tries) == 3
    assert not bus.dead_letters


async def test_a_failing_handler_is_dead_lettered_reported_and_replayable() -> None:
    bus = quick_bus()
    broken = {"on": True}
    seen: list[str] = []
    reports: list[Event] = []

    def picky(event: Event) -> None:
        if broken["on"]:
            raise ValueError("no technician on shift")
        seen.append(event.id)

    bus.subscribe(SystemEvents.WORK_ORDER_CREATED, picky)
    bus.subscribe(SystemEvents.WORK_ORDER_CREATED, lambda event: seen.append("other"))
    bus.subscribe(SystemEvents.EVENT_HANDLER_FAILED, reports.append)

    event = await bus.emit(SystemEvents.WORK_ORDER_CREATED, {"work_order_id": 9})
    assert seen == ["other"]
    [letter] = bus.dead_letters
    assert letter.event is event
    assert letter.attempts == 3
    assert letter.error == "ValueError: no technician on shift"
    assert letter.handler.endswith("picky")
    [report] = reports
    assert report.data == {
        "event_id": event.id,
        "event_type": SystemEvents.WORK_ORDER_CREATED,
        "handler": letter.handler,
        "error": letter.error,
        "attempts": 3,
        "dead_letter_id": letter.id,
    }
    assert report.causation_id == event.id

    broken["on"] = False
    assert await bus.replay_dead_letters() == {letter.id: True}
    assert seen == ["other", event.id]
    assert not bus.dead_letters


async def test_a_failing_failure_handler_does_not_loop() -> None:
    bus = quick_bus()

    def always(event: Event) -> None:
        raise RuntimeError("down")

    bus.subscribe("*", always)
    await bus.emit("test.event", {})
    assert [letter.event.type for letter in bus.dead_letters] == [
        "test.event",
        SystemEvents.EVENT_HANDLER_FAILED,
    ]


@pytest.mark.parametrize(
    ("event_type", "data", "words"),
    [
        ("", {}, "not a dotted name"),
        ("cmms..created", {}, "not a dotted name"),
        ("cmms.work_order.*", {}, "not a dotted name"),
        ("cmms.asset.updated", {"when": datetime.now(UTC)}, "not JSON-serialisable"),
        ("cmms.asset.updated", ["not", "a", "dict"], "must be a JSON object"),
        ("cmms.asset.updated", {"blob": "x" * 2000}, "the limit is 1024"),
        ("cmms.asset.updated", {"ratio": float("nan")}, "not JSON-serialisable"),
    ],
)
async def test_bad_events_are_refused_and_the_bus_keeps_running(
    event_type: str, data: Any, words: str
) -> None:
    bus = quick_bus(max_payload_bytes=1024)
    heard: list[Event] = []
    bus.subscribe("*", heard.append)
    with pytest.raises(EventError, match=words):
        await bus.emit(event_type, data)
    await bus.emit("cmms.asset.updated", {"asset_id": 1})
    assert [event.type for event in heard] == ["cmms.asset.updated"]


def test_bad_subscription_patterns_are_refused() -> None:
    with pytest.raises(EventError, match="not an event type or a wildcard"):
        quick_bus().subscribe("cmms work order", print)


async def test_cloudevents_round_trip() -> None:
    bus = quick_bus()
    event = await bus.emit(
        SystemEvents.AI_ANALYSIS_COMPLETED,
        {"asset_id": 4, "priority": "high"},
        source="asset_analyzer",
        correlation_id="req-9",
        priority=5,
    )
    envelope = to_cloudevent(event)
    assert envelope["specversion"] == "1.0"
    assert envelope["type"] == "ai.analysis.completed"
    assert envelope["source"] == "asset_analyzer"
    assert envelope["correlationid"] == "req-9"
    assert envelope["time"].endswith("Z")
    assert from_cloudevent(envelope) == event


def test_foreign_cloudevents_are_read_and_bad_ones_named() -> None:
    event = from_cloudevent(
        {
            "specversion": "1.0",
            "id": "A234-1234-1234",
            "source": "https://erp.example.com/orders",
            "type": "erp.order.shipped",
            "time": "2026-04-05T17:31:00Z",
            "data": {"order": 17},
        }
    )
    assert event.timestamp == datetime(2026, 4, 5, 17, 31, tzinfo=UTC)
    assert event.data == {"order": 17}
    with pytest.raises(EventError, match="specversion"):
        from_cloudevent({"specversion": "0.3", "id": "1", "source": "s", "type": "a.b"})
    with pytest.raises(EventError, match="'source'"):
        from_cloudevent({"specversion": "1.0", "id": "1", "type": "a.b"})
    with pytest.raises(EventError, match="invalid CloudEvent"):
        from_cloudevent(
            {"specversion": "1.0", "id": "1", "source": "s", "type": "a.b", "priority": "high"}
        )
    with pytest.raises(EventError, match="invalid CloudEvent"):
        from_cloudevent(
            {"specversion": "1.0", "id": "1", "source": "s", "type": "a.b", "time": "noon"}
        )


async def test_history_is_bounded_and_queryable() -> None:
    bus = quick_bus(history_size=5)
    for number in range(8):
        await bus.emit(
            "cmms.asset.updated" if number % 2 else "cmms.work_order.created",
            {"n": number},
            source="loader" if number < 6 else "other",
        )
    assert [event.data["n"] for event in bus.history] == [3, 4, 5, 6, 7]
    assert [e.data["n"] for e in bus.find("cmms.asset.*")] == [3, 5, 7]
    assert [e.data["n"] for e in bus.find(source="loader")] == [3, 4, 5]
    assert [e.data["n"] for e in bus.find(limit=2)] == [6, 7]
    future = datetime.now(UTC) + timedelta(minutes=1)
    assert bus.find(since=future) == []
    assert len(bus.find(until=future)) == 5
