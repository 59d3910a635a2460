"""In-process event bus throughput and memory.

* events/s from ``await bus.emit(...)`` to one async handler, and to ten handlers, against a
  bare loop that builds the same ``Event`` and awaits the same handler directly (the
  baseline: what any dispatch costs at the least);
* memory after 1,000,000 events with the history on (bounded by ``events.history_size``):
  growth of the process's resident set and of traced Python allocations;
* with the history persisted to the shared database (``events.persist_history``), on SQLite
  and on PostgreSQL, against the same platform without: events/s from a loop that lets other
  tasks run after each ``emit`` (as a gateway serving requests does; the history's writer
  then runs alongside), and from a tight loop that never does (the writer cannot run: the
  emitter finds its buffer full and writes it itself), with the time until every event is
  in the database.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import socket
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from _common import arg_parser, machine_info, print_table, ratio, write_json

from chatterfix import Platform
from chatterfix.events import Event, EventBus, RetryPolicy

TARGET_PER_S = 100_000
EVENT_TYPE = "cmms.work_order.created"
DATA = {"work_order_id": 1, "priority": "high"}


async def through_bus(count: int, handlers: int) -> float:
    bus = EventBus(history_size=1000, retry=RetryPolicy(attempts=1))
    seen = 0

    async def handler(event: Event) -> None:
        nonlocal seen
        seen += 1

    for _ in range(handlers):
        bus.subscribe(EVENT_TYPE, handler)
    began = time.perf_counter()
    for _ in range(count):
        await bus.emit(EVENT_TYPE, DATA, source="bench")
    elapsed = time.perf_counter() - began
    assert seen == count * handlers
    return count / elapsed


async def bare_loop(count: int, handlers: int) -> float:
    seen = 0

    async def handler(event: Event) -> None:
        nonlocal seen
        seen += 1

    subscribers = [handler] * handlers
    began = time.perf_counter()
    for _ in range(count):
        event = Event(type=EVENT_TYPE, data=DATA, source="bench")
        for subscriber in subscribers:
            await subscriber(event)
    elapsed = time.perf_counter() - began
    assert seen == count * handlers
    return count / elapsed


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def memory_after(count: int) -> dict[str, Any]:
    bus = EventBus(history_size=1000, retry=RetryPolicy(attempts=1))
    bus.subscribe("*", lambda event: None)
    gc.collect()
    rss_before = rss_kib()
    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    for number in range(count):
        await bus.emit(EVENT_TYPE, {"n": number}, source="bench")
    gc.collect()
    traced_after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "events": count,
        "history_kept": len(bus.history),
        "rss_growth_kib": rss_kib() - rss_before,
        "traced_growth_kib": (traced_after - traced_before) // 1024,
    }


POSTGRES = "postgresql://postgres@127.0.0.1:5432"


async def through_platform(count: int, database: str | None, yielding: bool) -> dict[str, float]:
    """One async handler; the history persisted to ``database`` (a URL) unless None."""
    config: dict[str, Any] = {"events": {"retry_attempts": 1}}
    if database is not None:
        config = {"database": {"url": database}, "events": {"persist_history": True}}
    platform = Platform(config=config, load_entrypoints=False, builtins=False)
    seen = 0

    async def handler(event: Event) -> None:
        nonlocal seen
        seen += 1

    platform.events.subscribe(EVENT_TYPE, handler)
    async with platform:
        began = time.perf_counter()
        for _ in range(count):
            await platform.events.emit(EVENT_TYPE, DATA, source="bench")
            if yielding:
                await anyio.lowlevel.checkpoint()
        emitted = time.perf_counter() - began
        if platform.events.store is not None:
            await platform.events.store.flush()
        stored = time.perf_counter() - began
        if database is not None:
            kept = len(await platform.events.query(EVENT_TYPE, limit=count))
            assert kept == count, f"{kept} of {count} events in the database"
    assert seen == count
    return {"emit_per_s": count / emitted, "stored_per_s": count / stored}


def postgres_reachable() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", 5432)) == 0


async def _postgres_admin(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(f"{POSTGRES}/postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def scratch_database(kind: str) -> Iterator[str]:
    """A database of its own for one run, removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{Path(folder) / 'bench.db'}"
        return
    name = f"chatterfix_bench_{uuid.uuid4().hex[:10]}"
    anyio.run(_postgres_admin, f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        anyio.run(_postgres_admin, f'DROP DATABASE "{name}" WITH (FORCE)')


def persistence_figures(count: int, runs: int) -> dict[str, dict[str, Any]]:
    backends = ["sqlite", *(["postgresql"] if postgres_reachable() else [])]
    figures: dict[str, dict[str, Any]] = {}
    for yielding in (True, False):
        loop = "yielding" if yielding else "tight"
        baseline = max(
            (anyio.run(through_platform, count, None, yielding) for _ in range(runs)),
            key=lambda result: result["emit_per_s"],
        )
        figures.setdefault("memory", {})[loop] = baseline
        for backend in backends:
            best: dict[str, float] | None = None
            for _ in range(runs):
                with scratch_database(backend) as url:
                    result = anyio.run(through_platform, count, url, yielding)
                if best is None or result["stored_per_s"] > best["stored_per_s"]:
                    best = result
            assert best is not None
            figures.setdefault(backend, {})[loop] = {
                **best,
                "ratio": ratio(best["stored_per_s"], baseline["emit_per_s"]),
            }
    return figures


def best_of(runs: int, function: Any, *args: Any) -> float:
    return max(anyio.run(function, *args) for _ in range(runs))


def main() -> None:
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--count", type=int, default=200_000, help="events per run")
    parser.add_argument("--memory-events", type=int, default=1_000_000)
    parser.add_argument("--persist-events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (best kept)")
    args = parser.parse_args()

    figures = {}
    for handlers in (1, 10):
        count = args.count if handlers == 1 else args.count // 5
        ours = best_of(args.runs, through_bus, count, handlers)
        bare = best_of(args.runs, bare_loop, count, handlers)
        figures[handlers] = {"bus_per_s": ours, "bare_per_s": bare, "ratio": ratio(ours, bare)}
    memory = anyio.run(memory_after, args.memory_events)
    persisted = persistence_figures(args.persist_events, args.runs)

    print_table(
        f"emit -> async handlers, events/s (best of {args.runs})",
        ["handlers", "bus events/s", "bare loop events/s", "ratio", "target"],
        [
            [
                str(handlers),
                f"{row['bus_per_s']:,.0f}",
                f"{row['bare_per_s']:,.0f}",
                f"{row['ratio']:.2f}",
                f">= {TARGET_PER_S:,}/s" if handlers == 1 else "",
            ]
            for handlers, row in figures.items()
        ],
    )
    print_table(
        f"memory after {memory['events']:,} events (history bounded at {memory['history_kept']})",
        ["measure", "growth"],
        [
            ["resident set", f"{memory['rss_growth_kib']:,} KiB"],
            ["traced Python allocations", f"{memory['traced_growth_kib']:,} KiB"],
        ],
    )
    print_table(
        f"{args.persist_events:,} events through a platform, history in the database "
        f"(best of {args.runs}); ratio: stored events/s over events/s without",
        ["history", "loop", "emit events/s", "stored events/s", "ratio"],
        [
            [
                backend,
                loop,
                f"{row['emit_per_s']:,.0f}",
                f"{row['stored_per_s']:,.0f}" if backend != "memory" else "",
                f"{row['ratio']:.2f}" if backend != "memory" else "",
            ]
            for backend, loops in persisted.items()
            for loop, row in loops.items()
        ],
    )
    met = figures[1]["bus_per_s"] >= TARGET_PER_S
    print(f"Target: >= {TARGET_PER_S:,} events/s to one handler: {'met' if met else 'MISSED'}")
    write_json(
        args.json,
        {
            "benchmark": "events_inprocess",
            "machine": machine_info(),
            "target": {"per_s_at_least": TARGET_PER_S, "met": met},
            "one_handler": figures[1],
            "ten_handlers": figures[10],
            "memory": memory,
            "persisted_history": persisted,
        },
    )


if __name__ == "__main__":
    main()
