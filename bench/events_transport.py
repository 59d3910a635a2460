"""Events between two processes through Redis Streams and NATS JetStream.

For each broker, a consumer process subscribes and a producer (this process) emits N events
one after the other; the consumer reports when it has received them all, and the latency of
each (from the event's timestamp to its arrival; both processes share the machine's clock).
The baseline is the same exchange written with the bare client (redis-py: XADD, then
XREADGROUP and XACK; nats-py: JetStream publish, then a pull consumer fetching and acking),
run side by side: the ratio is ours over bare.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import anyio
from _common import arg_parser, clean_env, machine_info, print_table, ratio, write_json

BROKERS = {"redis": "redis://127.0.0.1:6379/0", "nats": "nats://127.0.0.1:4222"}
TARGET_PER_S = 10_000

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
                await client.xack(stream, "bench", message_id)
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


async def produce_ours(url: str, stream: str, total: int) -> float:
    from chatterfix import Platform

    config = {"events": {"backend": url, "stream": stream, "group": "producer"}}
    platform = Platform(config=config, load_entrypoints=False, builtins=False)
    async with platform:
        began = time.time()
        for number in range(total):
            await platform.events.emit("bench.item", {"n": number})
    return began


async def produce_bare(url: str, stream: str, total: int) -> float:
    began = time.time()
    if url.startswith("redis"):
        import redis.asyncio as redis

        client = redis.from_url(url)
        for number in range(total):
            body = json.dumps({"n": number, "t": time.time()})
            await client.xadd(stream, {"event": body}, maxlen=100_000, approximate=True)
        await client.aclose()
    else:
        import nats

        connection = await nats.connect(url)
        js = connection.jetstream()
        for number in range(total):
            body = json.dumps({"n": number, "t": time.time()}).encode()
            await js.publish(f"{stream}.item", body, headers={"Nats-Msg-Id": str(number)})
        await connection.close()
    return began


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


def run_pair(kind: str, url: str, total: int) -> dict[str, Any]:
    stream = f"bench{uuid.uuid4().hex[:8]}"
    consumer_code = OURS_CONSUMER if kind == "ours" else BARE_CONSUMER
    consumer = subprocess.Popen(
        [sys.executable, "-c", consumer_code, url, stream, str(total)],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
        start_new_session=True,
    )
    try:
        assert consumer.stdout is not None
        if consumer.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind} consumer did not start")
        producer = produce_ours if kind == "ours" else produce_bare
        began = anyio.run(producer, url, stream, total)
        report = json.loads(consumer.stdout.readline())
        consumer.wait(timeout=60)
    finally:
        if consumer.poll() is None:
            consumer.kill()
        anyio.run(cleanup, url, stream)
    latencies = sorted(report["latencies"])
    return {
        "per_s": total / (report["end"] - began),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def main() -> None:
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--count", type=int, default=20_000, help="events per run")
    parser.add_argument("--runs", type=int, default=2, help="runs per figure (best kept)")
    args = parser.parse_args()

    figures: dict[str, dict[str, Any]] = {}
    for broker, url in BROKERS.items():
        best: dict[str, dict[str, Any]] = {}
        for _ in range(args.runs):
            for kind in ("ours", "bare"):
                result = run_pair(kind, url, args.count)
                if kind not in best or result["per_s"] > best[kind]["per_s"]:
                    best[kind] = result
        figures[broker] = {**best, "ratio": ratio(best["ours"]["per_s"], best["bare"]["per_s"])}

    print_table(
        f"{args.count:,} events producer -> consumer process, best of {args.runs}",
        ["broker", "ours events/s", "p50 / p99 ms", "bare events/s", "p50 / p99 ms", "ratio"],
        [
            [
                broker,
                f"{row['ours']['per_s']:,.0f}",
                f"{row['ours']['p50_ms']:.1f} / {row['ours']['p99_ms']:.1f}",
                f"{row['bare']['per_s']:,.0f}",
                f"{row['bare']['p50_ms']:.1f} / {row['bare']['p99_ms']:.1f}",
                f"{row['ratio']:.2f}",
            ]
            for broker, row in figures.items()
        ],
    )
    met = all(row["ours"]["per_s"] >= TARGET_PER_S for row in figures.values())
    print(f"Target: >= {TARGET_PER_S:,} events/s end to end: {'met' if met else 'MISSED'}")
    write_json(
        args.json,
        {
            "benchmark": "events_transport",
            "machine": machine_info(),
            "target": {"per_s_at_least": TARGET_PER_S, "met": met},
            "count": args.count,
            "brokers": figures,
        },
    )


if __name__ == "__main__":
    main()
