"""Requests/s of an in-process plugin route through the full default pipeline, against a bare
Starlette app serving the same handler.

Setup, in a temporary folder: a plugins folder holding one folder plugin, ``benchpipe``,
whose route ``GET /api/benchpipe/item`` runs the handler in ``HANDLER`` below; a bare app
file with the same handler on the same path; a data folder (``CHATTERFIX_DATA_DIR``) in
which ``chatterfix users create`` and ``chatterfix users token`` make an API token first.

Servers, each started fresh per run (pinned to CPU 0 when ``taskset`` exists):

* ``gateway, full pipeline``: ``chatterfix start --plugins-dir <folder>`` with every stage
  on: the access log (its default: one JSON record per request), the body limit (its
  default, 16 MiB), CORS with an allowed origin, the rate limit on with a high limit (one
  million requests a second per client, memory backend), auth on (the token sent with
  every request is verified; the gateway caches verified tokens), plugin middleware (the
  stage is empty here), and request metrics.
* ``gateway, full, cross-origin``: the same server, with an ``Origin: <allowed origin>``
  header on every request as well, so that CORS adds its headers to every response (a
  browser sends ``Origin`` only on cross-origin requests; API clients do not).
* ``gateway, full, Redis backend``: the full pipeline with the rate limits kept in Redis
  (``gateway.rate_limit.backend = redis://127.0.0.1:6379/0``), as replicas sharing a limit
  would; left out when Redis is not reachable.
* ``gateway, no stages``: the same with ``gateway.middleware = []``, no rate limit, no CORS
  and request metrics off: the routing layer and the access log only (a diagnostic).
* ``bare``: the bare app under ``python -m uvicorn`` with the same loop, http and lifespan
  settings, log level info and uvicorn's access log on: one log line per request too.

Every request carries ``Authorization: Bearer <token>`` (the bare app ignores it, and the
``Origin`` header of the cross-origin case). Load comes from ``wrk -t1 -c32 -d10s
--latency`` in another process, pinned to CPU 1, after a 2 s warm-up run of wrk. Each
server is measured ``--rounds`` times (default 3) in alternating order; the best run per
server is kept.

A last, in-process measure: what counting one request in the metrics costs, against
``prometheus_client``'s own Counter and Histogram with labels.
"""

from __future__ import annotations

import http.client
import json
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from _common import (
    HOST,
    add_wrk_options,
    arg_parser,
    chatterfix_start,
    clean_env,
    create_api_token,
    fmt_us,
    free_port,
    machine_info,
    pinned,
    print_table,
    ratio,
    require_chatterfix,
    require_tools,
    round_line,
    run_wrk_with_cpu,
    start_process,
    stop_process,
    uvicorn_command,
    wait_for_200,
    write_json,
)
from gateway_rps import UVICORN_SAME_AS_GATEWAY

TARGET_RATIO = 0.7
SERVER_CPU = 0
LOAD_CPU = 1
PATH = "/api/benchpipe/item"
ORIGIN = "https://cmms.example.com"

HANDLER = """\
from starlette.requests import Request
from starlette.responses import JSONResponse


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": 7, "title": "Replace pump seal", "status": "open"})
"""
PLUGIN_CODE = (
    HANDLER
    + """
from starlette.routing import Route

import chatterfix


@chatterfix.hookimpl
def register_routes(platform):
    return [Route("/api/benchpipe/item", item)]
"""
)
BARE_APP = (
    HANDLER
    + """
from starlette.applications import Starlette
from starlette.routing import Route

app = Starlette(routes=[Route("/api/benchpipe/item", item)])
"""
)
PLUGIN_MANIFEST = {"name": "benchpipe", "version": "1.0.0", "app_type": "api"}

FULL_PIPELINE = {
    "CHATTERFIX_GATEWAY__RATE_LIMIT__REQUESTS": "1000000",
    "CHATTERFIX_GATEWAY__RATE_LIMIT__PERIOD": "1",
    "CHATTERFIX_GATEWAY__CORS__ALLOW_ORIGINS": ORIGIN,
}
NO_STAGES = {"CHATTERFIX_GATEWAY__MIDDLEWARE": "[]", "CHATTERFIX_GATEWAY__METRICS": "false"}
# name: (settings, send an Origin header)
CASES: dict[str, tuple[dict[str, str], bool]] = {
    "gateway, full pipeline": (FULL_PIPELINE, False),
    "gateway, full, cross-origin": (FULL_PIPELINE, True),
    "gateway, full, Redis backend": (
        {
            **FULL_PIPELINE,
            "CHATTERFIX_GATEWAY__RATE_LIMIT__BACKEND": "redis://127.0.0.1:6379/0",
            "CHATTERFIX_GATEWAY__RATE_LIMIT__KEY_PREFIX": "chatterfix:bench-pipeline",
        },
        False,
    ),
    "gateway, no stages": (NO_STAGES, False),
    "bare": ({}, False),
}
# --stages: one stage at a time on top of the routing layer (request metrics on), to see
# what each costs; not part of the default run.
STAGE_CASES: dict[str, tuple[dict[str, str], bool]] = {
    "stage: none": ({"CHATTERFIX_GATEWAY__MIDDLEWARE": "[]"}, False),
    "stage: body_limit": ({"CHATTERFIX_GATEWAY__MIDDLEWARE": '["body_limit"]'}, False),
    "stage: cors": (
        {"CHATTERFIX_GATEWAY__MIDDLEWARE": '["cors"]', **FULL_PIPELINE},
        False,
    ),
    "stage: cors, Origin sent": (
        {"CHATTERFIX_GATEWAY__MIDDLEWARE": '["cors"]', **FULL_PIPELINE},
        True,
    ),
    "stage: rate_limit": (
        {"CHATTERFIX_GATEWAY__MIDDLEWARE": '["rate_limit"]', **FULL_PIPELINE},
        False,
    ),
    "stage: auth": ({"CHATTERFIX_GATEWAY__MIDDLEWARE": '["auth"]'}, False),
}


def prepare(root: Path) -> tuple[Path, Path, str]:
    """The plugins folder, the data folder and an API token."""
    plugins = root / "plugins"
    (plugins / "benchpipe").mkdir(parents=True)
    (plugins / "benchpipe" / "plugin.json").write_text(json.dumps(PLUGIN_MANIFEST))
    (plugins / "benchpipe" / "main.py").write_text(PLUGIN_CODE)
    (root / "bare_pipeline_app.py").write_text(BARE_APP)
    data = root / "data"
    token = create_api_token(root, data)
    return plugins, data, token


def command(name: str, port: int, root: Path, plugins: Path) -> list[str]:
    if name == "bare":
        return uvicorn_command(
            port,
            *UVICORN_SAME_AS_GATEWAY,
            "--log-level",
            "info",
            "--access-log",
            "--app-dir",
            str(root),
            "bare_pipeline_app:app",
        )
    return chatterfix_start(port, "--plugins-dir", str(plugins))


def request(port: int, token: str, origin: bool) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    headers = {"Authorization": f"Bearer {token}", **({"Origin": ORIGIN} if origin else {})}
    try:
        conn.request("GET", PATH, headers=headers)
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, json.loads(response.read() or b"null")
    finally:
        conn.close()


def measure(
    name: str, setup: tuple[Path, Path, str], root: Path, duration: str, connections: int
) -> dict[str, Any]:
    plugins, data, token = setup
    settings, origin = {**CASES, **STAGE_CASES}[name]
    port = free_port()
    env = clean_env(CHATTERFIX_DATA_DIR=str(data), **settings)
    proc = start_process(pinned(command(name, port, root, plugins), SERVER_CPU), cwd=root, env=env)
    try:
        wait_for_200(port, PATH, proc, timeout=60.0, interval=0.01)
        status, headers, body = request(port, token, origin)
        wrk_headers = [f"Authorization: Bearer {token}", *([f"Origin: {ORIGIN}"] if origin else [])]
        result = run_wrk_with_cpu(
            port, PATH, duration, connections, LOAD_CPU, [proc.pid], wrk_headers
        )
        result["server"] = name
        result["settings"] = settings
        result["origin_header"] = origin
        result["response"] = {"status": status, "body": body}
        # What shows that the stages ran: CORS and rate-limit headers, the request id.
        result["response_headers"] = sorted(
            header
            for header in headers
            if header.startswith(("access-control", "ratelimit", "x-request-id"))
        )
        return result
    finally:
        stop_process(proc)


def counting_cost(iterations: int = 200_000) -> dict[str, float]:
    """Nanoseconds to count one request: the gateway's counters against prometheus_client's
    Counter + Histogram with labels (each on its own registry)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from chatterfix.gateway.metrics import BUCKETS, RequestMetrics

    ours = RequestMetrics()
    registry = CollectorRegistry()
    counter = Counter("requests", "", ["route", "method", "status"], registry=registry)
    histogram = Histogram("latency", "", ["route", "method"], buckets=BUCKETS, registry=registry)

    def gateway_counters() -> None:
        ours.observe("/api/benchpipe/item", "GET", 200, 0.00042)

    def client_metrics() -> None:
        counter.labels("/api/benchpipe/item", "GET", "200").inc()
        histogram.labels("/api/benchpipe/item", "GET").observe(0.00042)

    def best(function: Any) -> float:
        runs = timeit.repeat(function, number=iterations, repeat=5)
        return min(runs) / iterations * 1e9

    return {"gateway_ns": best(gateway_counters), "prometheus_client_ns": best(client_metrics)}


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def _lowest_cpu(results: list[dict[str, Any]]) -> float | None:
    values = [r["cpu_us_per_request"] for r in results if r["cpu_us_per_request"]]
    return min(values) if values else None


def main() -> None:
    parser = arg_parser(__doc__ or "")
    add_wrk_options(parser)
    parser.add_argument(
        "--stages", action="store_true", help="also measure one stage at a time (a diagnostic)"
    )
    args = parser.parse_args()
    require_tools("wrk")
    require_chatterfix()

    names = list(CASES) + (list(STAGE_CASES) if args.stages else [])
    if not port_open(6379):
        print("Redis is not reachable on 127.0.0.1:6379: no Redis backend row", flush=True)
        names.remove("gateway, full, Redis backend")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cfx-bench-pipeline-") as tmp:
        root = Path(tmp)
        setup = prepare(root)
        for i in range(max(args.rounds, 1)):
            order = names if i % 2 == 0 else list(reversed(names))
            for name in order:
                result = measure(name, setup, root, args.duration, args.connections)
                runs[name].append(result)
                print(round_line(i + 1, name, result, 23), flush=True)
    elapsed = time.perf_counter() - started
    counting = counting_cost()

    best = {name: max(results, key=lambda r: r["rps"]) for name, results in runs.items()}

    def row(name: str, baseline: str, label: str) -> list[object]:
        value, base = best[name], best[baseline]
        errors = value["non_2xx"] or value["socket_errors"] or "-"
        return [
            label,
            f"{value['rps']:.0f}",
            f"{value['p50_s'] * 1000:.2f}",
            f"{value['p99_s'] * 1000:.2f}",
            fmt_us(value["cpu_us_per_request"]),
            f"{base['rps']:.0f}",
            f"{base['p50_s'] * 1000:.2f}",
            f"{base['p99_s'] * 1000:.2f}",
            f"{ratio(value['rps'], base['rps']):.2f}",
            errors,
        ]

    print_table(
        f"GET {PATH}: wrk -t1 -c{args.connections} -d{args.duration}, best of {args.rounds} "
        f"(server on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}; access logs on; "
        "CPU = server CPU us per request)",
        [
            "comparison",
            "req/s",
            "p50 ms",
            "p99 ms",
            "CPU us/req",
            "base req/s",
            "base p50",
            "base p99",
            "ratio",
            "errors",
        ],
        [
            row("gateway, full pipeline", "bare", "full default pipeline vs bare Starlette"),
            row("gateway, full, cross-origin", "bare", "  same, Origin on every request"),
            *(
                [row("gateway, full, Redis backend", "bare", "  same, rate limits in Redis")]
                if "gateway, full, Redis backend" in best
                else []
            ),
            row("gateway, no stages", "bare", "routing layer only vs bare Starlette"),
            row("gateway, full pipeline", "gateway, no stages", "full pipeline vs no stages"),
        ],
    )
    primary = ratio(best["gateway, full pipeline"]["rps"], best["bare"]["rps"])
    print(
        f"Target: full pipeline / bare >= {TARGET_RATIO}: {primary:.2f} -> "
        f"{'met' if primary >= TARGET_RATIO else 'MISSED'}; p99 "
        f"{best['gateway, full pipeline']['p99_s'] * 1000:.2f} ms against "
        f"{best['bare']['p99_s'] * 1000:.2f} ms"
    )
    stage_cpu = {name: _lowest_cpu(runs[name]) for name in STAGE_CASES if name in runs}
    if stage_cpu:
        none = stage_cpu["stage: none"] or 0.0
        print_table(
            "One stage at a time (the lowest server CPU per request of the rounds)",
            ["stage", "req/s", "CPU us/req", "CPU us/req over none"],
            [
                [name, f"{best[name]['rps']:.0f}", fmt_us(cpu), f"{(cpu or 0.0) - none:+.1f}"]
                for name, cpu in stage_cpu.items()
            ],
        )
    for name in names:
        r = best[name]
        print(f"{name}: {r['response']['status']} {r['response']['body']} {r['response_headers']}")
    print(
        f"Counting one request: {counting['gateway_ns']:.0f} ns in the gateway's counters, "
        f"{counting['prometheus_client_ns']:.0f} ns with prometheus_client's metric objects"
    )
    print(f"Total time {elapsed:.0f} s")

    write_json(
        args.json,
        {
            "benchmark": "pipeline",
            "machine": machine_info(),
            "method": (
                f"wrk -t1 -c{args.connections} -d{args.duration} --latency after a 2 s "
                f"warm-up, a token on every request; server pinned to CPU "
                f"{SERVER_CPU}, wrk to CPU {LOAD_CPU}; best of {args.rounds} alternating runs"
            ),
            "pinned": pinned(["true"], SERVER_CPU) != ["true"],
            "target": {"ratio_at_least": TARGET_RATIO, "met": primary >= TARGET_RATIO},
            "ratio": primary,
            "ratio_cross_origin": ratio(
                best["gateway, full, cross-origin"]["rps"], best["bare"]["rps"]
            ),
            "ratio_no_stages": ratio(best["gateway, no stages"]["rps"], best["bare"]["rps"]),
            "ratio_redis": (
                ratio(best["gateway, full, Redis backend"]["rps"], best["bare"]["rps"])
                if "gateway, full, Redis backend" in best
                else None
            ),
            "p99_s": best["gateway, full pipeline"]["p99_s"],
            "bare_p99_s": best["bare"]["p99_s"],
            "counting_ns": counting,
            "stage_cpu_us": stage_cpu,
            "best": best,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
