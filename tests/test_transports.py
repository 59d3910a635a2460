"""Events across processes through each broker transport (the machine's real Redis and NATS).

The same tests run unchanged against every transport.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest

from chatterfix import Event, Platform
from chatterfix.events.transports import PublishBatcher, TransportError
from tests.helpers import admin_headers, free_port, gateway, require_service

BROKERS = {
    "redis": ("redis://127.0.0.1:6379/0", 6379, "Redis"),
    "nats": ("nats://127.0.0.1:4222", 4222, "NATS"),
}


@pytest.fixture(params=sorted(BROKERS))
def broker(request: pytest.FixtureRequest) -> str:
    url, port, name = BROKERS[request.param]
    require_service(port, name)
    return url


@pytest.fixture
def stream(broker: str) -> Iterator[str]:
    name = f"chatterfix-test:{uuid.uuid4().hex[:12]}"
    yield name
    anyio.run(remove_stream, broker, name)


async def remove_stream(broker: str, name: str) -> None:
    """Leave the broker as it was: test streams are not kept."""
    if broker.startswith("redis"):
        import redis.asyncio as redis

        client = redis.from_url(broker)
        await client.delete(name)
        await client.aclose()
    else:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(broker)
        with contextlib.suppress(NotFoundError):
            await client.jetstream().delete_stream(name.replace(":", "_"))
        await client.close()


def broker_platform(broker: str, stream: str, group: str) -> Platform:
    config = {"events": {"backend": broker, "stream": stream, "group": group}}
    return Platform(config=config, load_entrypoints=False, builtins=False)


async def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await anyio.sleep(0.02)
    raise TimeoutError(f"not reached within {seconds} s")


@pytest.mark.anyio
async def test_two_platforms_share_events_both_ways_once_each(broker: str, stream: str) -> None:
    first = broker_platform(broker, stream, "first")
    second = broker_platform(broker, stream, "second")
    heard: dict[str, list[str]] = {"first": [], "second": []}
    first.events.subscribe("cmms.*", lambda event: heard["first"].append(event.id))
    second.events.subscribe("cmms.*", lambda event: heard["second"].append(event.id))
    async with first, second:
        one = await first.events.emit("cmms.work_order.created", {"work_order_id": 1})
        two = await second.events.emit("cmms.asset.updated", {"asset_id": 2})
        await wait_for(lambda: len(heard["first"]) == 2 and len(heard["second"]) == 2)
        await anyio.sleep(0.3)  # anything duplicated would arrive by now
    assert sorted(heard["first"]) == sorted(heard["second"]) == sorted([one.id, two.id])
    received = next(e for e in second.events.history if e.id == one.id)
    assert received.data == {"work_order_id": 1}
    assert received.timestamp == one.timestamp


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["redis", "nats"])
async def test_an_unreachable_broker_is_a_clear_error(scheme: str) -> None:
    platform = Platform(
        config={"events": {"backend": f"{scheme}://127.0.0.1:{free_port()}", "group": "g"}},
        load_entrypoints=False,
        builtins=False,
    )
    with pytest.raises(Exception, match="unreachable"):
        async with platform:
            pass


@pytest.mark.slow
def test_separate_processes_share_events_both_ways(
    broker: str, stream: str, tmp_path: Path
) -> None:
    env = {
        "CHATTERFIX_EVENTS__BACKEND": broker,
        "CHATTERFIX_EVENTS__STREAM": stream,
        "CHATTERFIX_EVENTS__GROUP": "remote",
    }

    async def exchange(url: str) -> None:
        local = broker_platform(broker, stream, "local")
        heard: list[Event] = []
        local.events.subscribe("erp.*", heard.append)
        async with local, httpx.AsyncClient() as client:
            sent = await local.events.emit("cmms.work_order.created", {"work_order_id": 3})

            for _ in range(200):
                reply = await client.get(url + "/platform/events?type=cmms.*")
                if sent.id in [event["id"] for event in reply.json()["events"]]:
                    break
                await anyio.sleep(0.05)
            else:
                raise AssertionError("the event did not reach the other process")
            reply = await client.post(
                url + "/platform/events",
                json={"type": "erp.order.shipped", "data": {"n": 1}},
                headers=admin_headers(tmp_path, env),
            )
            await wait_for(lambda: [e.id for e in heard] == [reply.json()["id"]])

    with gateway(sys.executable, cwd=tmp_path, env=env) as url:
        anyio.run(exchange, url)


CONSUMER = """
import os
import chatterfix

LOG = os.environ["EVENT_LOG"]


@chatterfix.hookimpl
def register_event_handlers(platform):
    def record(event):
        with open(LOG, "a") as log:
            log.write(event.data["id"] + "\\n")
    return [("load.item", record)]
"""


@pytest.mark.slow
def test_a_killed_consumer_loses_nothing(broker: str, stream: str, tmp_path: Path) -> None:
    apps = tmp_path / "apps" / "consumer"
    apps.mkdir(parents=True)
    (apps / "plugin.json").write_text(json.dumps({"name": "consumer"}))
    (apps / "main.py").write_text(CONSUMER)
    log = tmp_path / "handled.txt"
    env = {
        **os.environ,
        "CHATTERFIX_EVENTS__BACKEND": broker,
        "CHATTERFIX_EVENTS__STREAM": stream,
        "CHATTERFIX_EVENTS__GROUP": "consumers",
        "CHATTERFIX_EVENTS__CLAIM_IDLE": "0.5",
        "CHATTERFIX_PLUGINS_DIR": str(tmp_path / "apps"),
        "EVENT_LOG": str(log),
    }
    command = [sys.executable, "-m", "chatterfix", "start", "--no-access-log", "--port"]
    total = 10_000

    def handled() -> list[str]:
        return log.read_text().split() if log.exists() else []

    def start_consumer() -> subprocess.Popen[bytes]:
        port = free_port()
        output = tmp_path / f"consumer-{port}.log"
        with output.open("wb") as log_file:
            process = subprocess.Popen(
                [*command, str(port)],
                env=env,
                cwd=tmp_path,
                start_new_session=True,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60  # ready (its consumer group exists) once it answers
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).is_success:
                    return process
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        raise AssertionError(f"the consumer did not start:\n{output.read_text()[-3000:]}")

    async def publish() -> list[str]:
        producer = broker_platform(broker, stream, "producer")
        async with producer:
            return [
                (await producer.events.emit("load.item", {"id": f"item-{n}"})).data["id"]
                for n in range(total)
            ]

    consumer = start_consumer()
    sent: list[str] = []
    problems: list[BaseException] = []

    def produce() -> None:
        try:
            sent.extend(anyio.run(publish))
        except BaseException as exc:  # reported by the main thread below
            problems.append(exc)

    publisher = threading.Thread(target=produce)
    try:
        publisher.start()  # the consumer dies while events are still coming in
        deadline = time.monotonic() + 30
        while len(handled()) < 500 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(consumer.pid, signal.SIGKILL)
        consumer.wait()
        killed_at = len(handled())
        publisher.join(timeout=60)
        assert not problems, f"publishing failed: {problems[0]!r}"
        consumer = start_consumer()
        deadline = time.monotonic() + 60
        while set(handled()) < set(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if consumer.poll() is None:
            os.killpg(consumer.pid, signal.SIGTERM)
            consumer.wait(timeout=15)
    ids = handled()
    assert 0 < killed_at < total, "the consumer was killed in the middle of the stream"
    assert set(ids) == set(sent), f"lost {len(set(sent) - set(ids))} events"
    duplicates = len(ids) - len(set(ids))
    assert duplicates <= 100  # at most the batch being handled when the consumer died


@pytest.mark.anyio
async def test_order_per_producer_and_handler_failures_across_processes(
    broker: str, stream: str
) -> None:
    producer = broker_platform(broker, stream, "producer")
    consumer = broker_platform(broker, stream, "consumer")
    received: list[int] = []
    failures = {"left": 2}

    def flaky(event: Event) -> None:
        if failures["left"] > 0:  # the first event fails twice, then succeeds on its third try
            failures["left"] -= 1
            raise ConnectionError("CMMS database busy")
        received.append(event.data["n"])

    def always_broken(event: Event) -> None:
        raise RuntimeError("this handler never works")

    consumer.events.subscribe("order.item", flaky)
    consumer.events.subscribe("order.poison", always_broken)
    async with producer, consumer:
        for number in range(200):
            await producer.events.emit("order.item", {"n": number})
        await producer.events.emit("order.poison", {})
        await wait_for(lambda: len(received) == 200 and len(consumer.events.dead_letters) == 1)
    assert received == list(range(200))  # in order, none lost, none twice
    [letter] = consumer.events.dead_letters
    assert letter.event.type == "order.poison"
    assert letter.attempts == 3


@pytest.mark.anyio
async def test_concurrent_emitters_are_batched_and_each_keeps_its_order(
    broker: str, stream: str
) -> None:
    producer = broker_platform(broker, stream, "producer")
    consumer = broker_platform(broker, stream, "consumer")
    received: dict[int, list[int]] = {}
    consumer.events.subscribe(
        "batch.item",
        lambda event: received.setdefault(event.data["task"], []).append(event.data["n"]),
    )

    async def emit_in_order(task: int) -> None:
        for number in range(50):
            await producer.events.emit("batch.item", {"task": task, "n": number})

    async with producer, consumer:
        async with anyio.create_task_group() as group:
            for task in range(20):
                group.start_soon(emit_in_order, task)
        await wait_for(lambda: sum(len(numbers) for numbers in received.values()) >= 1000)
        await anyio.sleep(0.3)  # anything duplicated would arrive by now
    assert received == {task: list(range(50)) for task in range(20)}


class FakeBroker:
    """A send function that records each batch; it holds every batch until released, and
    fails the batches whose numbers (from 0) are in ``failing``."""

    def __init__(self, failing: frozenset[int] = frozenset()) -> None:
        self.batches: list[list[int]] = []
        self.release = anyio.Event()
        self.failing = failing

    async def send(self, batch: list[int]) -> None:
        self.batches.append(batch)
        await self.release.wait()
        if len(self.batches) - 1 in self.failing:
            raise TransportError("broker refused the batch")

    async def release_soon(self) -> None:
        await anyio.sleep(0.05)
        self.release.set()


async def publish_all(batcher: PublishBatcher[int], payloads: list[int]) -> dict[int, str]:
    outcome: dict[int, str] = {}

    async def one(payload: int) -> None:
        try:
            await batcher.publish(payload)
        except TransportError as exc:
            outcome[payload] = str(exc)
        else:
            outcome[payload] = "ok"

    async with anyio.create_task_group() as group:
        for payload in payloads:
            group.start_soon(one, payload)
            await anyio.lowlevel.checkpoint()  # each task queues before the next one starts
    return outcome


@pytest.mark.anyio
async def test_the_publish_batcher_groups_waiting_emitters_in_arrival_order() -> None:
    broker = FakeBroker()
    batcher = PublishBatcher(broker.send, describe=str, max_batch=3)
    async with anyio.create_task_group() as group:
        group.start_soon(broker.release_soon)
        outcome = await publish_all(batcher, list(range(8)))
    # The first emitter leads alone; the seven that queued behind it leave in batches of at
    # most three, in the order they arrived.
    assert broker.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]
    assert outcome == dict.fromkeys(range(8), "ok")


@pytest.mark.anyio
async def test_a_failed_batch_fails_its_own_emitters_only() -> None:
    broker = FakeBroker(failing=frozenset({1}))
    batcher = PublishBatcher(broker.send, describe=str, max_batch=2)
    async with anyio.create_task_group() as group:
        group.start_soon(broker.release_soon)
        outcome = await publish_all(batcher, list(range(5)))
    assert broker.batches == [[0], [1, 2], [3, 4]]
    assert outcome == {
        0: "ok",
        1: "broker refused the batch",
        2: "broker refused the batch",
        3: "ok",
        4: "ok",
    }


@pytest.mark.anyio
async def test_a_broker_that_does_not_answer_times_out_with_a_clear_error() -> None:
    broker = FakeBroker()
    batcher = PublishBatcher(
        broker.send, describe=lambda exc: f"publishing failed: {exc}", timeout=0.05
    )
    with pytest.raises(TransportError, match=r"publishing failed: no answer in 0.05s"):
        await batcher.publish(1)


@pytest.mark.anyio
async def test_cancelled_emitters_neither_fail_nor_stall_the_others() -> None:
    broker = FakeBroker()
    batcher = PublishBatcher(broker.send, describe=str)
    outcome: dict[int, str] = {}

    async def publish(payload: int, scope: anyio.CancelScope) -> None:
        with scope:
            await batcher.publish(payload)
            outcome[payload] = "ok"
            return
        outcome[payload] = "cancelled"

    leader, queued, last = anyio.CancelScope(), anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as group:
        group.start_soon(publish, 0, leader)  # leads, and is cancelled mid-send
        await anyio.sleep(0.01)
        group.start_soon(publish, 1, queued)  # next in line to lead; cancelled first
        group.start_soon(publish, 2, last)
        await anyio.sleep(0.01)
        leader.cancel()
        queued.cancel()
        await anyio.sleep(0.01)
        broker.release.set()
    # The leader's send was shielded, so its batch completed; the cancelled waiter's event
    # still left, with the next batch, led by the emitter behind it.
    assert broker.batches == [[0], [1, 2]]
    assert outcome == {0: "ok", 1: "cancelled", 2: "ok"}
