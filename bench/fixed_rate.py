"""An open-loop load generator at a fixed request rate, for latency (run by ``proxy.py``).

``python bench/fixed_rate.py URL --rate 500 --duration 10 --warmup 2`` sends ``GET URL``
at exactly ``rate`` requests per second over a pool of keep-alive HTTP/1.1 connections, and
prints one JSON object: latency percentiles (milliseconds) measured from each request's
*scheduled* time to the end of its response (so a stall delays every request scheduled
behind it, and is counted: no coordinated omission), the rate achieved and the errors.

(wrk keeps its connections as busy as it can: it measures throughput, not latency at a
given load; wrk2, which does this, is not packaged by Debian.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import urllib.parse
from typing import Any


async def request_once(
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]], payload: bytes
) -> int:
    reader, writer = await pool.get()
    try:
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length:
            await reader.readexactly(length)
        return status
    finally:
        pool.put_nowait((reader, writer))


async def run(url: str, rate: float, duration: float, warmup: float, connections: int) -> Any:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    clock = time.perf_counter  # (uvloop's loop.time() counts whole milliseconds)
    latencies: list[float] = []
    errors = 0
    interval = 1.0 / rate
    total = int(rate * (warmup + duration))
    start = clock() + 0.05
    measured_from = start + warmup

    async def one(scheduled: float) -> None:
        nonlocal errors
        try:
            status = await request_once(pool, payload)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            return
        if status != 200:
            errors += 1
        if scheduled >= measured_from:
            latencies.append(clock() - scheduled)

    tasks = []
    for index in range(total):
        scheduled = start + index * interval
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    finished = clock()
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, math.ceil(p / 100 * len(latencies)) - 1)] * 1000

    return {
        "rate": rate,
        "achieved_rate": round(total / (finished - start), 1),
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": round(pct(50), 3),
        "p90_ms": round(pct(90), 3),
        "p99_ms": round(pct(99), 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    runner: Any = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    result = runner(run(args.url, args.rate, args.duration, args.warmup, args.connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
