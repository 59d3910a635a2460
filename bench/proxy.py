"""The reverse proxy: requests/s, added latency and memory while streaming, side by side.

Servers, each started fresh per run:

* ``direct``: the upstream itself (``bench/proxy_upstream.py``: a plain ASGI JSON hello
  under uvicorn with httptools and uvloop, no access log);
* ``nginx``: nginx (one worker, upstream keep-alive, access log off) proxying the upstream;
* ``minimal``: ``bench/minimal_proxy.py``, a minimal Starlette proxy on an aiohttp client:
  the baseline;
* ``chatterfix``: ``chatterfix start --no-access-log`` with the upstream as a remote app
  (a plugins folder holding its ``plugin.json`` with ``url``): the full path, with service
  discovery, load balancing, health checks, forwarding headers, per-instance metrics and
  the gateway's default middleware pipeline;
* ``chatterfix, access log``: the same with the gateway's access log on (its default).

The measured server runs on CPU 0; wrk, the load generator and the upstream behind the
proxies on CPU 1 (``taskset``). A proxy is the bottleneck by far, so the upstream sharing a
core with the load does not limit it; for ``direct`` the upstream is started on CPU 0 like
the other measured servers.

Figures:

1. requests/s: ``wrk -t1 -c32 -d10s --latency`` after a 2 s warm-up, ``--rounds`` rounds in
   alternating order, best run per server; ratios of ours to the minimal proxy (target
   >= 0.9), to nginx and to direct;
2. added latency at a fixed moderate rate: ``bench/fixed_rate.py`` (open loop, 500 req/s,
   8 s after 2 s of warm-up) against the upstream behind the proxies, then through each
   proxy; added p50 = p50 through the proxy - p50 direct (target < 1 ms);
3. memory while streaming: RSS of the proxy process sampled every 20 ms while ``curl``
   downloads 1 GiB through it to /dev/null, after a warm-up download; growth = peak -
   before (target < 20 MB).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    HOST,
    add_wrk_options,
    arg_parser,
    chatterfix_start,
    clean_env,
    free_port,
    have,
    machine_info,
    pinned,
    print_table,
    process_tree,
    ratio,
    require_tools,
    run_wrk_with_cpu,
    start_process,
    stop_process,
    uvicorn_command,
    wait_for_200,
    write_json,
)

SERVER_CPU = 0
LOAD_CPU = 1
SERVICE = "hello_up"
PATHS = {
    "direct": "/api/hello_up/hello",
    "nginx": "/api/hello_up/hello",
    "minimal": "/api/hello_up/hello",
    "chatterfix": f"/api/{SERVICE}/hello",
    "chatterfix, access log": f"/api/{SERVICE}/hello",
}
TARGET_RATIO = 0.9
TARGET_ADDED_P50_MS = 1.0
TARGET_RSS_GROWTH_MB = 20.0
STREAM_BYTES = 1 << 30
UVICORN_FAST = ["--http", "httptools", "--loop", "uvloop", "--no-access-log"]


def upstream_command(port: int, app: str = "proxy_upstream:app") -> list[str]:
    """``app`` from bench/ under uvicorn with httptools and uvloop, no access log."""
    return uvicorn_command(
        port, *UVICORN_FAST, "--log-level", "warning", "--app-dir", str(BENCH_DIR), app
    )


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_buffering off;
        }}
    }}
}}
"""


def server_command(name: str, port: int, upstream: int, work: Path) -> tuple[list[str], Any]:
    """The command and environment of server ``name`` on ``port``, in folder ``work``."""
    if name == "direct":
        return upstream_command(port), clean_env()
    if name == "nginx":
        (work / "nginx.conf").write_text(NGINX_CONF.format(work=work, upstream=upstream, port=port))
        work.chmod(0o777)
        return ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], clean_env()
    if name == "minimal":
        cmd = upstream_command(port, "minimal_proxy:app")
        return cmd, clean_env(UPSTREAM=f"http://{HOST}:{upstream}")
    plugins = work / "apps"
    (plugins / SERVICE).mkdir(parents=True)
    manifest = {"name": SERVICE, "version": "1.0.0", "url": f"http://{HOST}:{upstream}"}
    (plugins / SERVICE / "plugin.json").write_text(json.dumps(manifest))
    cmd = chatterfix_start(port, "--plugins-dir", str(plugins))
    if name == "chatterfix":
        cmd.append("--no-access-log")
    env = clean_env(CHATTERFIX_DATA_DIR=str(work / "data"))
    return cmd, env


@contextmanager
def server(name: str, upstream: int) -> Iterator[tuple[int, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        port = free_port()
        cmd, env = server_command(name, port, upstream, work)
        proc = start_process(pinned(cmd, SERVER_CPU), cwd=work, env=env)
        try:
            wait_for_200(port, PATHS[name], proc, timeout=60.0, interval=0.02)
            yield port, proc
        finally:
            stop_process(proc)


def fixed_rate(port: int, path: str, rate: float, duration: float) -> dict[str, Any]:
    cmd = pinned(
        [
            sys.executable,
            str(BENCH_DIR / "fixed_rate.py"),
            f"http://{HOST}:{port}{path}",
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--warmup",
            "2",
        ],
        LOAD_CPU,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def stream_rss(port: int, pid: int, size: int) -> dict[str, Any]:
    """Download ``size`` bytes through the server with curl while sampling its RSS."""
    url = f"http://{HOST}:{port}/api/{SERVICE}/big?bytes="
    warm = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", url + str(64 << 20)], capture_output=True, timeout=120
    )
    if warm.returncode != 0:
        raise RuntimeError(f"warm-up download failed: {warm.stderr.decode()}")
    pids = process_tree(pid)
    before = rss_kib(pids)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kib(pids))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    result = subprocess.run(
        pinned(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", url + str(size)],
            LOAD_CPU,
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - began
    done.set()
    sampler.join()
    after = rss_kib(pids)
    downloaded = int(result.stdout or 0)
    return {
        "bytes": downloaded,
        "complete": downloaded == size,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(downloaded / elapsed / 1e6, 1),
        "rss_before_kib": before,
        "rss_peak_kib": peak,
        "rss_after_kib": after,
        "growth_mb": round((peak - before) / 1024, 2),
    }


def main() -> None:
    parser = arg_parser(__doc__ or "")
    add_wrk_options(parser)
    parser.add_argument("--rate", type=float, default=500.0, help="fixed rate (default 500/s)")
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument("--stream-bytes", type=int, default=STREAM_BYTES)
    args = parser.parse_args()
    require_tools("wrk", "curl")
    names = list(PATHS)
    if not have("nginx"):
        print("nginx is not installed (apt-get install -y nginx): its row is left out")
        names.remove("nginx")

    started = time.perf_counter()
    upstream_port = free_port()
    upstream = start_process(pinned(upstream_command(upstream_port), LOAD_CPU), env=clean_env())
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    latency: dict[str, dict[str, Any]] = {}
    streaming: dict[str, dict[str, Any]] = {}
    try:
        wait_for_200(upstream_port, "/", upstream, timeout=30.0)
        latency["upstream"] = fixed_rate(
            upstream_port, PATHS["direct"], args.rate, args.latency_seconds
        )
        print(f"latency upstream direct: {latency['upstream']}", flush=True)
        for i in range(max(args.rounds, 1)):
            order = names if i % 2 == 0 else list(reversed(names))
            for name in order:
                with server(name, upstream_port) as (port, proc):
                    path = PATHS[name]
                    result = run_wrk_with_cpu(
                        port,
                        path,
                        args.duration,
                        args.connections,
                        LOAD_CPU,
                        process_tree(proc.pid),
                    )
                    result["server"] = name
                    runs[name].append(result)
                    print(
                        f"round {i + 1} {name:<24} {result['rps']:>9.0f} req/s  "
                        f"p50 {result['p50_s'] * 1000:.2f} ms  "
                        f"p99 {result['p99_s'] * 1000:.2f} ms  "
                        f"server CPU {result['cpu_us_per_request']:.1f} us/request",
                        flush=True,
                    )
                    if i == 0 and name != "direct":
                        latency[name] = fixed_rate(port, path, args.rate, args.latency_seconds)
                        print(f"  latency at {args.rate:.0f}/s: {latency[name]}", flush=True)
                        if name != "chatterfix, access log":
                            streaming[name] = stream_rss(port, proc.pid, args.stream_bytes)
                            print(f"  streaming: {streaming[name]}", flush=True)
    finally:
        stop_process(upstream)
    elapsed = time.perf_counter() - started

    best = {name: max(results, key=lambda r: r["rps"]) for name, results in runs.items()}
    # Server CPU per request, the lowest of the rounds: what a request costs the server,
    # much less sensitive than req/s to other work on the machine.
    cpu = {name: min(r["cpu_us_per_request"] for r in results) for name, results in runs.items()}
    ours = best["chatterfix"]["rps"]
    ratios = {
        "vs_minimal": ratio(ours, best["minimal"]["rps"]),
        "vs_nginx": ratio(ours, best["nginx"]["rps"]) if "nginx" in best else None,
        "vs_direct": ratio(ours, best["direct"]["rps"]),
        "access_log_vs_minimal": ratio(
            best["chatterfix, access log"]["rps"], best["minimal"]["rps"]
        ),
        "minimal_vs_direct": ratio(best["minimal"]["rps"], best["direct"]["rps"]),
        "nginx_vs_direct": ratio(best["nginx"]["rps"], best["direct"]["rps"])
        if "nginx" in best
        else None,
    }
    cpu_ratios = {
        name: cpu[name] / cpu["chatterfix"] for name in names if name != "chatterfix"
    }  # like req/s ratios: ours / theirs in requests per CPU second
    base_p50 = latency["upstream"]["p50_ms"]
    added = {
        name: round(result["p50_ms"] - base_p50, 3)
        for name, result in latency.items()
        if name != "upstream"
    }

    rows = []
    for name in names:
        r = best[name]
        rows.append(
            [
                name,
                f"{r['rps']:.0f}",
                f"{r['p50_s'] * 1000:.2f}",
                f"{r['p99_s'] * 1000:.2f}",
                f"{ratio(ours, r['rps']):.2f}" if name != "chatterfix" else "1.00",
                f"{cpu[name]:.1f}",
                f"{cpu_ratios[name]:.2f}" if name != "chatterfix" else "1.00",
                f"{latency[name]['p50_ms']:.3f}" if name in latency else f"{base_p50:.3f}",
                f"{added[name]:+.3f}" if name in added else "-",
                f"{streaming[name]['growth_mb']:.1f}" if name in streaming else "-",
                f"{streaming[name]['mb_per_s']:.0f}" if name in streaming else "-",
                r["non_2xx"] or r["socket_errors"] or "-",
            ]
        )
    print_table(
        f"GET /api/{SERVICE}/hello: wrk -t1 -c{args.connections} -d{args.duration}, best of "
        f"{args.rounds}; latency at {args.rate:.0f} req/s; RSS growth while streaming "
        f"{args.stream_bytes / (1 << 30):.2f} GiB",
        [
            "server",
            "req/s",
            "p50 ms",
            "p99 ms",
            "ours/this",
            "CPU us/req",
            "CPU ours/this",
            f"p50 ms @{args.rate:.0f}/s",
            "added p50 ms",
            "RSS growth MB",
            "MB/s",
            "errors",
        ],
        rows,
    )
    met_ratio = ratios["vs_minimal"] >= TARGET_RATIO
    met_latency = added["chatterfix"] < TARGET_ADDED_P50_MS
    met_rss = streaming["chatterfix"]["growth_mb"] < TARGET_RSS_GROWTH_MB
    print(
        f"Target: chatterfix / minimal aiohttp proxy >= {TARGET_RATIO}: "
        f"{ratios['vs_minimal']:.2f} -> {'met' if met_ratio else 'MISSED'}"
    )
    if ratios["vs_nginx"] is not None:
        print(f"chatterfix / nginx: {ratios['vs_nginx']:.2f}")
    print(f"chatterfix / direct: {ratios['vs_direct']:.2f}")
    print(
        "Server CPU per request (lowest of the rounds), ours / minimal in requests per CPU "
        f"second: {cpu_ratios['minimal']:.2f}"
    )
    print(
        f"Target: added p50 at {args.rate:.0f} req/s < {TARGET_ADDED_P50_MS} ms: "
        f"{added['chatterfix']:.3f} ms -> {'met' if met_latency else 'MISSED'}"
    )
    print(
        f"Target: RSS growth streaming {args.stream_bytes / (1 << 30):.2f} GiB < "
        f"{TARGET_RSS_GROWTH_MB} MB: {streaming['chatterfix']['growth_mb']:.2f} MB -> "
        f"{'met' if met_rss else 'MISSED'}"
    )
    print(f"Total time {elapsed:.0f} s")

    write_json(
        args.json,
        {
            "benchmark": "proxy",
            "machine": machine_info(),
            "method": textwrap.dedent(
                f"""wrk -t1 -c{args.connections} -d{args.duration} --latency after a 2 s
                warm-up, best of {args.rounds} alternating rounds; measured server on CPU
                {SERVER_CPU}, wrk/load/upstream on CPU {LOAD_CPU}; latency: open loop at
                {args.rate:.0f} req/s for {args.latency_seconds:g} s; streaming: curl
                {args.stream_bytes} bytes to /dev/null, RSS sampled every 20 ms"""
            ).replace("\n", " "),
            "pinned": pinned(["true"], SERVER_CPU) != ["true"],
            "targets": {
                "ratio_vs_minimal_at_least": TARGET_RATIO,
                "added_p50_ms_below": TARGET_ADDED_P50_MS,
                "rss_growth_mb_below": TARGET_RSS_GROWTH_MB,
                "met": {"ratio": met_ratio, "latency": met_latency, "rss": met_rss},
            },
            "ratios": ratios,
            "cpu_us_per_request": cpu,
            "cpu_ratios": cpu_ratios,
            "added_p50_ms": added,
            "latency": latency,
            "streaming": streaming,
            "best": best,
            "runs": runs,
            "elapsed_s": round(elapsed, 1),
        },
    )


if __name__ == "__main__":
    main()
