"""Events between processes through Redis Streams and NATS JetStream.

For each broker, a consumer process subscribes and producers emit N events; the consumer
reports when it has received them all, and the latency of each (from the event's timestamp
to its arrival; all processes share the machine's clock). Three ways of producing:

* one task emitting one event after the other (each ``await emit`` returns once the broker
  has acknowledged the event);
* ``--tasks`` concurrent tasks in one process, each emitting its share one after the other
  (what a gateway serving many requests does);
* the same from two producer processes at once.

The baseline is the same exchange written with the bare client, with the same producers:
redis-py ``XADD`` awaited per event, a consumer reading with ``XREADGROUP COUNT 100`` and
acknowledging each batch with one ``XACK``; nats-py JetStream ``publish`` awaited per event,
a pull consumer fetching 100 at a time and acknowledging each message. The ratio is ours
over bare. A last table shows what the broker takes from a bare client that batches by hand
(pipelines of 500 ``XADD``; 500 ``publish_async`` then their acks), one producer task: the
ceiling on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from _common import arg_parser, clean_env, machine_info, print_table, ratio, write_json

BROKERS = {"redis": "redis://127.0.0.1:6379/0", "nats": "nats://127.0.0.1:4222"}
TARGET_PER_S = 10_000
HAND_BATCH = 500

OURS_CONSUMER = """
import json, sys, time, anyio
from chatterfix import Platform
url, stream, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
latencies = []
done = anyio.Event()
def handle(event):
    latencies.append(time.time() - event.timestamp.timestamp())
    if len(latencies) == total:
        done.set()
async def main():
    platform = Platform(config={"events": {"backend": url, "stream": stream, "group": "bench"}},
                        load_entrypoints=False, builtins=False)
    platform.events.subscribe("bench.*", handle)
    async with platform:
        print("ready", flush=True)
        await done.wait()
        print(json.dumps({"end": time.time(), "latencies": latencies}), flush=True)
anyio.run(main)
"""

BARE_CONSUMER = """
import json, sys, time, anyio
url, stream, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
latencies = []
async def redis_main():
    import redis.asyncio as redis
    client = redis.from_url(url)
    await client.xgroup_create(stream, "bench", id="$", mkstream=True)
    print("ready", flush=True)
    while len(latencies) < total:
        reply = await client.xreadgroup("bench", "c", {stream: ">"}, count=100, block=1000)
        for _, messages in reply or []:
            for message_id, fields in messages:
                body = json.loads(fields[b"event"])
                latencies.append(time.time() - body["t"])
            await client.xack(stream, "bench", *[item[0] for item in messages])
async def nats_main():
    import nats
    client = await nats.connect(url)
    js = client.jetstream()
    await js.add_stream(name=stream, subjects=[stream + ".>"])
    sub = await js.pull_subscribe(stream + ".>", durable="bench", stream=stream)
    print("ready", flush=True)
    while len(latencies) < total:
        try:
            messages = await sub.fetch(100, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for message in messages:
            latencies.append(time.time() - json.loads(message.data)["t"])
            await message.ack()
    await client.close()
anyio.run(redis_main if url.startswith("redis") else nats_main)
print(json.dumps({"end": time.time(), "latencies": latencies}), flush=True)
"""

Go = Callable[[], Awaitable[None]]


def shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


async def produce_ours(
    url: str, stream: str, total: int, tasks: int, producer: str, go: Go
) -> None:
    from chatterfix import Platform

    config = {"events": {"backend": url, "stream": stream, "group": producer}}
    platform = Platform(config=config, load_entrypoints=False, builtins=False)

    async def emit_share(task: int, count: int) -> None:
        for number in range(count):
            await platform.events.emit("bench.item", {"task": task, "n": number})

    async with platform:
        await go()
        async with anyio.create_task_group() as group:
            for task, count in enumerate(shares(total, tasks)):
                group.start_soon(emit_share, task, count)


async def produce_bare(
    url: str, stream: str, total: int, tasks: int, producer: str, go: Go
) -> None:
    def body(task: int, number: int) -> str:
        return json.dumps({"task": task, "n": number, "t": time.time()})

    if url.startswith("redis"):
        import redis.asyncio as redis

        client = redis.from_url(url)

        async def xadd_share(task: int, count: int) -> None:
            for number in range(count):
                await client.xadd(
                    stream, {"event": body(task, number)}, maxlen=100_000, approximate=True
                )

        await client.ping()
        await go()
        async with anyio.create_task_group() as group:
            for task, count in enumerate(shares(total, tasks)):
                group.start_soon(xadd_share, task, count)
        await client.aclose()
    else:
        import nats

        connection = await nats.connect(url)
        js = connection.jetstream()

        async def publish_share(task: int, count: int) -> None:
            for number in range(count):
                await js.publish(
                    f"{stream}.item",
                    body(task, number).encode(),
                    headers={"Nats-Msg-Id": f"{producer}-{task}-{number}"},
                )

        await go()
        async with anyio.create_task_group() as group:
            for task, count in enumerate(shares(total, tasks)):
                group.start_soon(publish_share, task, count)
        await connection.close()


async def produce_hand_batched(
    url: str, stream: str, total: int, tasks: int, producer: str, go: Go
) -> None:
    def body(number: int) -> str:
        return json.dumps({"n": number, "t": time.time()})

    if url.startswith("redis"):
        import redis.asyncio as redis

        client = redis.from_url(url)
        await client.ping()
        await go()
        for start in range(0, total, HAND_BATCH):
            pipeline = client.pipeline(transaction=False)
            for number in range(start, min(total, start + HAND_BATCH)):
                pipeline.xadd(stream, {"event": body(number)}, maxlen=100_000, approximate=True)
            await pipeline.execute()
        await client.aclose()
    else:
        import nats

        connection = await nats.connect(url)
        js = connection.jetstream()
        await go()
        for start in range(0, total, HAND_BATCH):
            acks = [
                await js.publish_async(
                    f"{stream}.item",
                    body(number).encode(),
                    headers={"Nats-Msg-Id": f"{producer}-{number}"},
                )
                for number in range(start, min(total, start + HAND_BATCH))
            ]
            await asyncio.gather(*acks)
        await connection.close()


PRODUCERS = {"ours": produce_ours, "bare": produce_bare, "hand": produce_hand_batched}


async def cleanup(url: str, stream: str) -> None:
    if url.startswith("redis"):
        import redis.asyncio as redis

        client = redis.from_url(url)
        await client.delete(stream)
        await client.aclose()
    else:
        import nats

        connection = await nats.connect(url)
        with contextlib.suppress(Exception):  # the stream may not exist: nothing to clean
            await connection.jetstream().delete_stream(stream.replace(":", "_"))
        await connection.close()


def spawn(code_or_args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *code_or_args],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
        start_new_session=True,
        **kwargs,
    )


def run_pair(kind: str, url: str, total: int, tasks: int, processes: int) -> dict[str, Any]:
    stream = f"bench{uuid.uuid4().hex[:8]}"
    consumer_code = OURS_CONSUMER if kind == "ours" else BARE_CONSUMER
    consumer = spawn(["-c", consumer_code, url, stream, str(total)])
    helpers: list[subprocess.Popen[str]] = []
    counts = shares(total, processes)
    try:
        assert consumer.stdout is not None
        if consumer.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind} consumer did not start")
        for index, count in enumerate(counts[1:], 1):
            args = [str(Path(__file__)), "--produce", kind, url, stream, str(count), str(tasks)]
            helper = spawn([*args, f"producer-{index}"], stdin=subprocess.PIPE)
            helpers.append(helper)
            assert helper.stdout is not None
            if helper.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{kind} producer {index} did not start")
        began = 0.0

        async def go() -> None:
            nonlocal began
            began = time.time()
            for helper in helpers:
                assert helper.stdin is not None
                helper.stdin.write("go\n")
                helper.stdin.flush()

        anyio.run(PRODUCERS[kind], url, stream, counts[0], tasks, "producer-0", go)
        report = json.loads(consumer.stdout.readline())
        consumer.wait(timeout=60)
        for helper in helpers:
            helper.wait(timeout=60)
    finally:
        for process in (consumer, *helpers):
            if process.poll() is None:
                process.kill()
                process.wait()
        anyio.run(cleanup, url, stream)
    latencies = sorted(report["latencies"])
    return {
        "per_s": total / (report["end"] - began),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def helper_main(argv: list[str]) -> None:
    """A second producer process: get ready, wait for "go" on stdin, produce."""
    kind, url, stream, count, tasks, name = argv

    async def go() -> None:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)

    anyio.run(PRODUCERS[kind], url, stream, int(count), int(tasks), name, go)


def main() -> None:
    if sys.argv[1:2] == ["--produce"]:
        helper_main(sys.argv[2:])
        return
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--count", type=int, default=20_000, help="events per run")
    parser.add_argument("--runs", type=int, default=2, help="runs per figure (best kept)")
    parser.add_argument("--tasks", type=int, default=32, help="concurrent producer tasks")
    args = parser.parse_args()
    scenarios = {
        "1 task": (1, 1),
        f"{args.tasks} tasks": (args.tasks, 1),
        f"2 processes x {args.tasks} tasks": (args.tasks, 2),
    }

    figures: dict[str, dict[str, Any]] = {}
    for broker, url in BROKERS.items():
        figures[broker] = {"scenarios": {}}
        for label, (tasks, processes) in scenarios.items():
            best: dict[str, dict[str, Any]] = {}
            for _ in range(args.runs):
                for kind in ("ours", "bare"):
                    result = run_pair(kind, url, args.count, tasks, processes)
                    if kind not in best or result["per_s"] > best[kind]["per_s"]:
                        best[kind] = result
            figures[broker]["scenarios"][label] = {
                **best,
                "ratio": ratio(best["ours"]["per_s"], best["bare"]["per_s"]),
            }
        figures[broker]["hand_batched"] = max(
            (run_pair("hand", url, args.count, 1, 1) for _ in range(args.runs)),
            key=lambda result: result["per_s"],
        )
        # The headline: many concurrent emitters in one process, as in a busy gateway.
        figures[broker].update(figures[broker]["scenarios"][f"{args.tasks} tasks"])

    print_table(
        f"{args.count:,} events producers -> consumer process, best of {args.runs}",
        [
            "broker",
            "producers",
            "ours events/s",
            "p50 / p99 ms",
            "bare events/s",
            "p50 / p99 ms",
            "ratio",
        ],
        [
            [
                broker,
                label,
                f"{row['ours']['per_s']:,.0f}",
                f"{row['ours']['p50_ms']:.1f} / {row['ours']['p99_ms']:.1f}",
                f"{row['bare']['per_s']:,.0f}",
                f"{row['bare']['p50_ms']:.1f} / {row['bare']['p99_ms']:.1f}",
                f"{row['ratio']:.2f}",
            ]
            for broker, broker_figures in figures.items()
            for label, row in broker_figures["scenarios"].items()
        ],
    )
    print_table(
        f"ceiling: bare client batching by hand ({HAND_BATCH} per round trip), one task",
        ["broker", "events/s", "p50 / p99 ms"],
        [
            [
                broker,
                f"{row['hand_batched']['per_s']:,.0f}",
                f"{row['hand_batched']['p50_ms']:.1f} / {row['hand_batched']['p99_ms']:.1f}",
            ]
            for broker, row in figures.items()
        ],
    )
    met = all(row["ours"]["per_s"] >= TARGET_PER_S for row in figures.values())
    print(
        f"Target: >= {TARGET_PER_S:,} events/s end to end with {args.tasks} emitting tasks: "
        f"{'met' if met else 'MISSED'}"
    )
    write_json(
        args.json,
        {
            "benchmark": "events_transport",
            "machine": machine_info(),
            "target": {"per_s_at_least": TARGET_PER_S, "met": met},
            "count": args.count,
            "tasks": args.tasks,
            "brokers": figures,
        },
    )


if __name__ == "__main__":
    main()
