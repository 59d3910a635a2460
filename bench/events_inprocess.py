"""In-process event bus throughput and memory.

* events/s from ``await bus.emit(...)`` to one async handler, and to ten handlers, against a
  bare loop that builds the same ``Event`` and awaits the same handler directly (the
  baseline: what any dispatch costs at the least);
* memory after 1,000,000 events with the history on (bounded by ``events.history_size``):
  growth of the process's resident set and of traced Python allocations.
"""

from __future__ import annotations

import gc
import resource
import time
import tracemalloc
from typing import Any

import anyio
from _common import arg_parser, machine_info, print_table, ratio, write_json

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


def best_of(runs: int, function: Any, *args: Any) -> float:
    return max(anyio.run(function, *args) for _ in range(runs))


def main() -> None:
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--count", type=int, default=200_000, help="events per run")
    parser.add_argument("--memory-events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (best kept)")
    args = parser.parse_args()

    figures = {}
    for handlers in (1, 10):
        count = args.count if handlers == 1 else args.count // 5
        ours = best_of(args.runs, through_bus, count, handlers)
        bare = best_of(args.runs, bare_loop, count, handlers)
        figures[handlers] = {"bus_per_s": ours, "bare_per_s": bare, "ratio": ratio(ours, bare)}
    memory = anyio.run(memory_after, args.memory_events)

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
        },
    )


if __name__ == "__main__":
    main()
