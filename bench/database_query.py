"""Round trips per second of ``Database.execute_query`` against raw SQLAlchemy Core.

For each backend, one worker process (pinned to CPU 1 when ``taskset`` exists) runs one
coroutine that awaits one statement after the other, on one event loop (uvloop when
installed), with three sides built on the same database:

* ``service``: ``chatterfix.services.database.Database(url)``, the platform's database
  service, called as ``await db.execute_query(sql, params, fetch="one")`` with ``?``
  placeholders. It maps ``sqlite:///`` to aiosqlite and ``postgresql://`` to asyncpg, creates
  its engine without pre-ping (``database.pool_pre_ping`` off, ``pool_size=5`` on
  PostgreSQL; a statement whose connection dropped is retried once instead), and on SQLite
  turns the driver's own transaction handling off, sets ``PRAGMA journal_mode=WAL`` and
  ``PRAGMA foreign_keys=ON`` on each new connection, and issues an explicit ``BEGIN`` when a
  transaction begins.
* ``raw``: ``create_async_engine`` with the same async URL and SQLAlchemy's defaults (no
  pre-ping; the same ``pool_size=5`` on PostgreSQL); on SQLite the same three connection
  settings and the same explicit ``BEGIN``, so both sides send the database the same
  statements. Each call is ``async with engine.begin() as conn: result = await
  conn.execute(text(sql), {...})`` with named binds, the row read with
  ``result.mappings().first()`` into a ``dict``.
* ``raw + pre-ping`` (diagnostic): ``raw`` with ``pool_pre_ping=True``, what
  ``database.pool_pre_ping = true`` costs.

Statements: a point ``SELECT`` by primary key on a table of ``--rows`` rows (keys drawn at
random, the same sequence for every side) and a single-row ``INSERT``. Each side runs
``--warmup`` round trips, then ``--rounds`` rounds of ``--iterations`` round trips in
alternating order; the best round per side is kept. SQLite uses a file in a temporary
folder; PostgreSQL (``--pg-url``) gets tables with a unique name, dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import (
    arg_parser,
    clean_env,
    exit_on_sigterm,
    machine_info,
    pinned,
    print_table,
    ratio,
    start_process,
    stop_process,
    write_json,
)

TARGET_RATIO = 0.8
WORKER_CPU = 1
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SIDES = ("service", "raw", "raw + pre-ping")
OPERATIONS = ("select", "insert")
Call = Callable[[int], Awaitable[Any]]


# -- worker: runs in its own (pinned) process ------------------------------------------------


def _sqlite_connect(connection: Any, _record: Any) -> None:
    # The same connection settings as the service, so that both sides send the same statements.
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def raw_engine(async_url: str, pre_ping: bool) -> Any:
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine

    options: dict[str, Any] = {"pool_pre_ping": True} if pre_ping else {}
    engine = create_async_engine(async_url, **options)
    if async_url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


async def create_tables(engine: Any, backend: str, table: str, rows: int) -> None:
    from sqlalchemy import text

    serial = "SERIAL PRIMARY KEY" if backend == "postgresql" else "INTEGER PRIMARY KEY"
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await conn.execute(text(f"DROP TABLE IF EXISTS {table}_ins"))
        await conn.execute(
            text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(100), qty INTEGER)")
        )
        await conn.execute(
            text(f"CREATE TABLE {table}_ins (id {serial}, name VARCHAR(100), qty INTEGER)")
        )
        await conn.execute(
            text(f"INSERT INTO {table} (id, name, qty) VALUES (:id, :name, :qty)"),
            [{"id": i, "name": f"item {i}", "qty": i % 97} for i in range(1, rows + 1)],
        )
        await conn.execute(text(f"ANALYZE {table}"))


async def drop_tables(async_url: str, table: str) -> None:
    from sqlalchemy import text

    engine = raw_engine(async_url, pre_ping=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
            await conn.execute(text(f"DROP TABLE IF EXISTS {table}_ins"))
    finally:
        await engine.dispose()


def make_calls(db: Any, engines: dict[str, Any], table: str) -> dict[str, dict[str, Call]]:
    from sqlalchemy import text

    select_q = f"SELECT id, name, qty FROM {table} WHERE id = ?"
    select_n = f"SELECT id, name, qty FROM {table} WHERE id = :id"
    insert_q = f"INSERT INTO {table}_ins (name, qty) VALUES (?, ?)"
    insert_n = f"INSERT INTO {table}_ins (name, qty) VALUES (:name, :qty)"

    async def service_select(key: int) -> Any:
        result = await db.execute_query(select_q, [key], fetch="one")
        if not result["success"]:
            raise RuntimeError(result["error"])
        return result["data"]

    async def service_insert(key: int) -> Any:
        result = await db.execute_query(insert_q, ["bench", key])
        if not result["success"]:
            raise RuntimeError(result["error"])
        return result["rowcount"]

    def raw_calls(engine: Any) -> dict[str, Call]:
        async def select(key: int) -> Any:
            async with engine.begin() as conn:
                result = await conn.execute(text(select_n), {"id": key})
                row = result.mappings().first()
                return dict(row) if row is not None else None

        async def insert(key: int) -> Any:
            async with engine.begin() as conn:
                result = await conn.execute(text(insert_n), {"name": "bench", "qty": key})
                return result.rowcount

        return {"select": select, "insert": insert}

    return {
        "service": {"select": service_select, "insert": service_insert},
        "raw": raw_calls(engines["raw"]),
        "raw + pre-ping": raw_calls(engines["raw + pre-ping"]),
    }


async def timed_round(call: Call, keys: list[int]) -> dict[str, Any]:
    latencies = []
    clock = time.perf_counter
    cpu_began = time.process_time()
    began = clock()
    for key in keys:
        t0 = clock()
        await call(key)
        latencies.append(clock() - t0)
    elapsed = clock() - began
    cpu = time.process_time() - cpu_began
    latencies.sort()
    return {
        "ops_per_s": len(keys) / elapsed,
        "elapsed_s": elapsed,
        "iterations": len(keys),
        # CPU of this whole process (event loop and driver threads, SQLite included).
        "cpu_us_per_op": cpu / len(keys) * 1e6,
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6,
    }


async def work(args: dict[str, Any]) -> dict[str, Any]:
    from chatterfix.services.database import Database, async_url

    backend, table = args["backend"], args["table"]
    db = Database(args["url"])
    url = async_url(args["url"])
    engines = {"raw": raw_engine(url, False), "raw + pre-ping": raw_engine(url, True)}
    try:
        await create_tables(engines["raw"], backend, table, args["rows"])
        calls = make_calls(db, engines, table)
        rng = random.Random(42)
        # The service and the baseline must answer alike.
        for key in (1, args["rows"] // 2, args["rows"]):
            answers = [await calls[side]["select"](key) for side in SIDES]
            if any(answer != answers[0] for answer in answers):
                raise RuntimeError(f"different rows for id {key}: {answers}")
        warm = [rng.randint(1, args["rows"]) for _ in range(args["warmup"])]
        for op in OPERATIONS:
            for side in SIDES:
                for key in warm:
                    await calls[side][op](key)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            op: {side: [] for side in SIDES} for op in OPERATIONS
        }
        for op in OPERATIONS:
            for i in range(args["rounds"]):
                keys = [rng.randint(1, args["rows"]) for _ in range(args["iterations"])]
                order = SIDES if i % 2 == 0 else tuple(reversed(SIDES))
                for side in order:
                    result = await timed_round(calls[side][op], keys)
                    runs[op][side].append(result)
                    print(
                        f"{backend:<10} {op:<6} round {i + 1} {side:<15} "
                        f"{result['ops_per_s']:>8.0f} ops/s  p50 {result['p50_us']:.0f} us  "
                        f"p99 {result['p99_us']:.0f} us  CPU {result['cpu_us_per_op']:.0f} us/op",
                        file=sys.stderr,
                        flush=True,
                    )
        from sqlalchemy import text

        async with engines["raw"].connect() as conn:
            if backend == "postgresql":
                server_version = (await conn.execute(text("SHOW server_version"))).scalar()
                journal = None
            else:
                server_version = (await conn.execute(text("SELECT sqlite_version()"))).scalar()
                journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        return {
            "runs": runs,
            "server_version": server_version,
            "journal_mode": journal,
            "pool": type(db.engine.pool).__name__,
            "placeholders_us": placeholders_cost(f"SELECT id, name, qty FROM {table} WHERE id = ?"),
        }
    finally:
        with contextlib.suppress(Exception):
            if backend == "postgresql":
                async with engines["raw"].begin() as conn:
                    from sqlalchemy import text

                    await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
                    await conn.execute(text(f"DROP TABLE IF EXISTS {table}_ins"))
        await db.aclose()
        for engine in engines.values():
            await engine.dispose()


def placeholders_cost(sql: str) -> float:
    """Microseconds per call of the service's ``?``-to-named-bind rewrite of ``sql``."""
    from chatterfix.services.database import bind_placeholders

    number = 20_000
    best = min(timeit.repeat(lambda: bind_placeholders(sql, [1]), number=number, repeat=3))
    return best / number * 1e6


def run_loop(coro: Awaitable[Any]) -> tuple[Any, str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro), "asyncio"  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro), "uvloop"  # type: ignore[arg-type]


def worker_main(spec: Path, out: Path) -> None:
    exit_on_sigterm()
    # A parent started in the background passes SIGINT on as ignored: stop on it anyway.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = json.loads(spec.read_text())
    result, loop = run_loop(work(args))
    result["event_loop"] = loop
    result["cpu_affinity"] = sorted(os.sched_getaffinity(0))
    out.write_text(json.dumps(result), encoding="utf-8")


# -- orchestration ---------------------------------------------------------------------------


def postgres_reachable(url: str) -> str | None:
    """``None`` when PostgreSQL answers at ``url``, else why not."""

    async def probe() -> None:
        from chatterfix.services.database import async_url

        engine = raw_engine(async_url(url), pre_ping=False)
        try:
            async with engine.connect() as conn:
                from sqlalchemy import text

                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(asyncio.wait_for(probe(), 10))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def run_backend(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    spec_file = workdir / f"{spec['backend']}-spec.json"
    out = workdir / f"{spec['backend']}-out.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    cmd = [sys.executable, __file__, "--worker", str(spec_file), str(out)]
    proc = start_process(pinned(cmd, WORKER_CPU), env=clean_env(), stderr=None, cwd=workdir)
    try:
        proc.wait(timeout=300)
    finally:
        stop_process(proc)
        if spec["backend"] == "postgresql":
            # Also when the worker was stopped before its own clean-up.
            from chatterfix.services.database import async_url

            with contextlib.suppress(Exception):
                asyncio.run(drop_tables(async_url(spec["url"]), spec["table"]))
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{spec['backend']} worker exited with code {proc.returncode}")
    return dict(json.loads(out.read_text()))


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for op, sides in runs.items():
        best = {side: max(rounds, key=lambda r: r["ops_per_s"]) for side, rounds in sides.items()}
        per_round = [
            ratio(s["ops_per_s"], r["ops_per_s"])
            for s, r in zip(sides["service"], sides["raw"], strict=True)
        ]
        cpu = {side: min(r["cpu_us_per_op"] for r in rounds) for side, rounds in sides.items()}
        summary[op] = {
            "best": best,
            "min_cpu_us_per_op": cpu,
            "cpu_ratio": ratio(cpu["raw"], cpu["service"]),
            "cpu_us_per_op_added": cpu["service"] - cpu["raw"],
            "ratio": ratio(best["service"]["ops_per_s"], best["raw"]["ops_per_s"]),
            "ratio_vs_pre_ping": ratio(
                best["service"]["ops_per_s"], best["raw + pre-ping"]["ops_per_s"]
            ),
            "pre_ping_ratio": ratio(best["raw + pre-ping"]["ops_per_s"], best["raw"]["ops_per_s"]),
            "median_round_ratio": statistics.median(per_round),
            "us_per_op_added": (
                1e6 / best["service"]["ops_per_s"] - 1e6 / best["raw"]["ops_per_s"]
            ),
        }
    return summary


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--iterations", type=int, default=2000, help="round trips per round")
    parser.add_argument("--warmup", type=int, default=300, help="round trips before measuring")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side (default 5)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows in the SELECT table")
    parser.add_argument("--pg-url", default=PG_URL, help=f"PostgreSQL URL (default {PG_URL})")
    parser.add_argument(
        "--backends", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"]
    )
    args = parser.parse_args()

    started = time.perf_counter()
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cfx-bench-db-") as tmp:
        workdir = Path(tmp)
        for backend in args.backends:
            if backend == "sqlite":
                url = f"sqlite:///{workdir / 'bench.db'}"
            else:
                url = args.pg_url
                problem = postgres_reachable(url)
                if problem:
                    skipped[backend] = problem
                    print(f"skipping PostgreSQL at {url}: {problem}", file=sys.stderr)
                    continue
            spec = {
                "backend": backend,
                "url": url,
                "table": f"bench_dbq_{os.getpid()}_{secrets.token_hex(3)}",
                "rows": args.rows,
                "iterations": args.iterations,
                "warmup": args.warmup,
                "rounds": max(args.rounds, 1),
            }
            worker = run_backend(spec, workdir)
            results[backend] = {
                **summarise(worker["runs"]),
                **worker,
                "url": url if backend == "postgresql" else "sqlite:///<temporary folder>/bench.db",
            }
    elapsed = time.perf_counter() - started

    labels = {"select": "SELECT by primary key, fetch one", "insert": "INSERT one row"}
    rows: list[list[object]] = []
    for backend, result in results.items():
        for op in OPERATIONS:
            r = result[op]
            best = r["best"]
            cpu = r["min_cpu_us_per_op"]
            rows.append(
                [
                    f"{backend}: {labels[op]}",
                    f"{best['service']['ops_per_s']:.0f}",
                    f"{best['service']['p50_us']:.0f}",
                    f"{best['service']['p99_us']:.0f}",
                    f"{cpu['service']:.0f}",
                    f"{best['raw']['ops_per_s']:.0f}",
                    f"{best['raw']['p50_us']:.0f}",
                    f"{best['raw']['p99_us']:.0f}",
                    f"{cpu['raw']:.0f}",
                    f"{best['raw + pre-ping']['ops_per_s']:.0f}",
                    f"{cpu['raw + pre-ping']:.0f}",
                    f"{r['ratio']:.2f}",
                    f"{r['ratio_vs_pre_ping']:.2f}",
                    f"{r['cpu_ratio']:.2f}",
                ]
            )
    print_table(
        f"Round trips/s, one coroutine, {args.iterations} per round, best of {args.rounds} "
        f"(worker on CPU {WORKER_CPU}; p50/p99 in us; CPU = least client CPU us/op of any "
        "round; ratio = service / raw; vs ping = service / raw + pre-ping; "
        "CPU ratio = raw CPU / service CPU)",
        [
            "statement",
            "service/s",
            "p50",
            "p99",
            "CPU",
            "raw/s",
            "p50",
            "p99",
            "CPU",
            "raw+ping/s",
            "CPU",
            "ratio",
            "vs ping",
            "CPU ratio",
        ],
        rows,
    )
    primary = [results[b][op]["ratio"] for b in results for op in OPERATIONS]
    met = bool(primary) and min(primary) >= TARGET_RATIO
    for backend, result in results.items():
        print(
            f"{backend}: pool {result['pool']}, event loop {result['event_loop']}, "
            f"server {result['server_version']}"
            + (f", journal_mode {result['journal_mode']}" if result["journal_mode"] else "")
        )
    if results:
        first = next(iter(results.values()))
        print(f"bind_placeholders() on the SELECT: {first['placeholders_us']:.1f} us per call")
    print(
        f"Target: service / raw >= {TARGET_RATIO} for every statement: "
        f"{min(primary) if primary else float('nan'):.2f} (lowest) -> "
        f"{'met' if met else 'MISSED'}"
    )
    for backend, reason in skipped.items():
        print(f"{backend} skipped: {reason}")
    print(f"Total time {elapsed:.0f} s")

    write_json(
        args.json,
        {
            "benchmark": "database_query",
            "machine": machine_info(),
            "method": (
                f"one coroutine, sequential round trips; {args.warmup} warm-up round trips per "
                f"side and statement, then best of {args.rounds} alternating rounds of "
                f"{args.iterations}; worker process pinned to CPU {WORKER_CPU}"
            ),
            "pinned": pinned(["true"], WORKER_CPU) != ["true"],
            "target": {"ratio_at_least": TARGET_RATIO, "met": met},
            "rows": args.rows,
            "backends": results,
            "skipped": skipped,
            "versions": versions(),
        },
    )


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("sqlalchemy", "aiosqlite", "asyncpg", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


if __name__ == "__main__":
    main()
