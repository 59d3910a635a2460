"""Requests/s of the ``hello`` plugin route through the gateway against a bare Starlette app.

Servers (each started fresh per run, pinned to CPU 0 when ``taskset`` exists):

* ``gateway``: ``chatterfix start`` serving ``GET /api/hello`` (the built-in ``hello``
  plugin). ``chatterfix start`` runs uvicorn with ``lifespan="on"``, loop and http ``auto``
  (uvloop and httptools when installed), uvicorn's own logging configuration and access log
  off, and the gateway's access log ON (its default): one JSON record per request, at log
  level info.
* ``bare``: ``bench/bare_app.py`` (the same handler in a plain Starlette app) under
  ``python -m uvicorn --loop auto --http auto --log-level info --lifespan on`` with
  uvicorn's access log on: one log line per request as well. The like-for-like baseline.
* ``bare, quiet``: the bare app with ``--log-level warning --no-access-log``.
* ``gateway, quiet``: ``chatterfix start --no-access-log``: what the gateway costs without
  the access log (log level info only adds start-up lines).

Server output goes to /dev/null in every case. Load comes from ``wrk -t1 -c32 -d10s
--latency`` in another process, pinned to CPU 1, after a 2 s warm-up run of wrk. Each
server is measured ``--rounds`` times (default 3) in alternating order; the table shows the
best run per server (highest req/s, with that run's latencies).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    COMPARISON_HEADERS,
    add_wrk_options,
    arg_parser,
    chatterfix_start,
    clean_env,
    comparison_row,
    cpu_ratio,
    fmt_us,
    free_port,
    http_get,
    machine_info,
    pinned,
    print_table,
    ratio,
    require_chatterfix,
    require_tools,
    run_wrk_with_cpu,
    start_process,
    stop_process,
    uvicorn_command,
    wait_for_200,
    write_json,
)

TARGET_RATIO = 0.8
PATH = "/api/hello"
SERVER_CPU = 0
LOAD_CPU = 1
UVICORN_SAME_AS_GATEWAY = ["--loop", "auto", "--http", "auto", "--lifespan", "on"]


def server_commands(port: int) -> dict[str, list[str]]:
    uvicorn = uvicorn_command(port)
    return {
        "gateway": chatterfix_start(port),
        "bare": [
            *uvicorn,
            *UVICORN_SAME_AS_GATEWAY,
            "--log-level",
            "info",
            "--access-log",
            "--app-dir",
            str(BENCH_DIR),
            "bare_app:app",
        ],
        "bare, quiet": [
            *uvicorn,
            *UVICORN_SAME_AS_GATEWAY,
            "--log-level",
            "warning",
            "--no-access-log",
            "--app-dir",
            str(BENCH_DIR),
            "bare_app:app",
        ],
        "gateway, quiet": chatterfix_start(port, "--no-access-log"),
    }


def measure(
    name: str, cmd: list[str], port: int, duration: str, connections: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        return _measure_in(name, cmd, port, duration, connections, Path(workdir))


def _measure_in(
    name: str, cmd: list[str], port: int, duration: str, connections: int, workdir: Path
) -> dict[str, Any]:
    proc = start_process(pinned(cmd, SERVER_CPU), cwd=workdir, env=clean_env())
    try:
        wait_for_200(port, PATH, proc, timeout=60.0, interval=0.01)
        status, body = http_get(port, PATH)
        result = run_wrk_with_cpu(port, PATH, duration, connections, LOAD_CPU, [proc.pid])
        result["server"] = name
        result["response"] = {"status": status, "body": json.loads(body)}
        return result
    finally:
        stop_process(proc)


def main() -> None:
    parser = arg_parser(__doc__ or "")
    add_wrk_options(parser)
    args = parser.parse_args()
    require_tools("wrk")
    require_chatterfix()

    names = list(server_commands(0))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    started = time.perf_counter()
    for i in range(max(args.rounds, 1)):
        order = names if i % 2 == 0 else list(reversed(names))
        for name in order:
            port = free_port()
            cmd = server_commands(port)[name]
            result = measure(name, cmd, port, args.duration, args.connections)
            runs[name].append(result)
            print(
                f"round {i + 1} {name:<15} {result['rps']:>10.0f} req/s  "
                f"p50 {result['p50_s'] * 1000:.2f} ms  p99 {result['p99_s'] * 1000:.2f} ms  "
                f"server CPU {fmt_us(result['cpu_us_per_request'])} us/request",
                flush=True,
            )
    elapsed = time.perf_counter() - started

    best = {name: max(results, key=lambda r: r["rps"]) for name, results in runs.items()}
    bodies = {name: best[name]["response"]["body"] for name in names}
    same_body = len({json.dumps(b, sort_keys=True) for b in bodies.values()}) == 1

    def row(name: str, baseline: str, label: str) -> list[object]:
        return comparison_row(label, best[name], best[baseline])

    primary = ratio(best["gateway"]["rps"], best["bare"]["rps"])
    print_table(
        f"GET {PATH}: wrk -t1 -c{args.connections} -d{args.duration}, best of {args.rounds} "
        f"(server on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}; "
        "CPU = server CPU us per request; CPU ratio = base CPU / CPU)",
        COMPARISON_HEADERS,
        [
            row("gateway", "bare", "chatterfix start vs bare (same settings, access log on)"),
            row("gateway, quiet", "bare, quiet", "gateway vs bare, both warning + no access log"),
            row("gateway", "bare, quiet", "chatterfix start vs bare quiet"),
            row("bare", "bare, quiet", "bare: access log on vs off"),
        ],
    )
    print(
        f"Target: chatterfix start / bare >= {TARGET_RATIO}: "
        f"{primary:.2f} -> {'met' if primary >= TARGET_RATIO else 'MISSED'}"
    )
    print(
        "Note: `chatterfix start` logs every request by default (the gateway's JSON access log; "
        "the bare server writes uvicorn's); the 'quiet' rows compare both servers with the "
        "access log off."
    )
    print(f"Responses identical across servers: {'yes' if same_body else 'NO'} ({bodies})")
    print(f"Total time {elapsed:.0f} s")

    write_json(
        args.json,
        {
            "benchmark": "gateway_rps",
            "machine": machine_info(),
            "method": (
                f"wrk -t1 -c{args.connections} -d{args.duration} --latency after a 2 s warm-up; "
                f"server pinned to CPU {SERVER_CPU}, wrk to CPU {LOAD_CPU}; best of "
                f"{args.rounds} alternating runs"
            ),
            "pinned": pinned(["true"], SERVER_CPU) != ["true"],
            "target": {"ratio_at_least": TARGET_RATIO, "met": primary >= TARGET_RATIO},
            "ratio": primary,
            "ratio_quiet": ratio(best["gateway, quiet"]["rps"], best["bare, quiet"]["rps"]),
            "cpu_ratio": cpu_ratio(best["gateway"], best["bare"]),
            "cpu_ratio_quiet": cpu_ratio(best["gateway, quiet"], best["bare, quiet"]),
            "ratio_vs_bare_quiet": ratio(best["gateway"]["rps"], best["bare, quiet"]["rps"]),
            "best": best,
            "runs": runs,
            "same_response_body": same_body,
            "servers": {name: " ".join(cmd) for name, cmd in server_commands(0).items()},
        },
    )


if __name__ == "__main__":
    main()
