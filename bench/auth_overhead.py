"""Requests/s through ``chatterfix start`` with authentication on and off.

Setup, in a temporary folder: a plugins folder holding one folder plugin, ``benchauth``,
whose route ``GET /api/benchauth/item`` is decorated with
``@chatterfix.requires("work_order.read")`` and returns a small JSON object; a data folder
(``CHATTERFIX_DATA_DIR``, so the default SQLite database lives there) in which
``chatterfix users create bench --role admin`` and ``chatterfix users token bench`` create a
user and an API token before any server starts.

Servers, each started fresh per run as ``chatterfix start --plugins-dir <folder>
--no-access-log`` (pinned to CPU 0 when ``taskset`` exists) with the same data folder:

* ``token, auth on``: default configuration; the protected route loaded with
  ``Authorization: Bearer <token>``. The gateway caches a verified token for
  ``auth.token_cache_seconds`` (10 s by default), so steady-state requests make no database
  round trip.
* ``no token, auth off``: ``CHATTERFIX_AUTH__ENABLED=false``; the protected route without a
  header (the decorator lets every request through when auth is off).
* ``token, no cache`` (worst case): auth on with ``CHATTERFIX_AUTH__TOKEN_CACHE_SECONDS=0``,
  so every request verifies its token against SQLite.
* ``open route, auth on`` / ``open route, auth off``: the built-in ``GET /api/hello`` with
  no header.

Load comes from ``wrk -t1 -c32 -d10s --latency`` in another process, pinned to CPU 1, after
a 2 s warm-up run of wrk. Each server is measured ``--rounds`` times (default 3) in
alternating order; the best run per server is kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    HOST,
    arg_parser,
    clean_env,
    free_port,
    have,
    machine_info,
    pinned,
    print_table,
    ratio,
    start_process,
    stop_process,
    venv_bin,
    wait_for_200,
    write_json,
)
from gateway_rps import parse_wrk, process_cpu_s

TARGET_RATIO = 0.85
SERVER_CPU = 0
LOAD_CPU = 1
PROTECTED = "/api/benchauth/item"
OPEN = "/api/hello"
PERMISSION = "work_order.read"

PLUGIN_MANIFEST = {
    "name": "benchauth",
    "version": "1.0.0",
    "description": "A route that needs a permission",
    "app_type": "api",
}
PLUGIN_CODE = f'''\
from starlette.responses import JSONResponse
from starlette.routing import Route

import chatterfix
from chatterfix.permissions import requires


@requires("{PERMISSION}")
async def item(request):
    return JSONResponse({{"id": 7, "title": "Replace pump seal", "status": "open"}})


@chatterfix.hookimpl
def register_routes(platform):
    return [Route("{PROTECTED}", item)]
'''

# name: (settings, path, send the token)
CASES: dict[str, tuple[dict[str, str], str, bool]] = {
    "token, auth on": ({}, PROTECTED, True),
    "no token, auth off": ({"CHATTERFIX_AUTH__ENABLED": "false"}, PROTECTED, False),
    "token, no cache": ({"CHATTERFIX_AUTH__TOKEN_CACHE_SECONDS": "0"}, PROTECTED, True),
    "open route, auth on": ({}, OPEN, False),
    "open route, auth off": ({"CHATTERFIX_AUTH__ENABLED": "false"}, OPEN, False),
}


def prepare(root: Path) -> tuple[Path, Path, str]:
    """The plugins folder, the data folder and the bench user's API token."""
    plugins = root / "plugins"
    (plugins / "benchauth").mkdir(parents=True)
    (plugins / "benchauth" / "plugin.json").write_text(json.dumps(PLUGIN_MANIFEST))
    (plugins / "benchauth" / "main.py").write_text(PLUGIN_CODE)
    data = root / "data"
    env = clean_env(CHATTERFIX_DATA_DIR=str(data))
    chatterfix = str(venv_bin("chatterfix"))
    for args in (["users", "create", "bench", "--role", "admin"], ["users", "token", "bench"]):
        proc = subprocess.run(
            [chatterfix, *args], cwd=root, env=env, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise RuntimeError(f"chatterfix {' '.join(args)} failed:\n{proc.stderr}")
    token = proc.stdout.strip().splitlines()[-1]
    if not token.startswith("cfx_"):
        raise RuntimeError(f"unexpected output of chatterfix users token: {proc.stdout!r}")
    return plugins, data, token


def request(port: int, path: str, token: str | None) -> tuple[int, Any]:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def run_wrk(
    port: int, path: str, token: str | None, duration: str, connections: int
) -> dict[str, Any]:
    header = ["-H", f"Authorization: Bearer {token}"] if token else []
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}", "--latency", *header]
    proc = subprocess.run(
        pinned([*cmd, f"http://{HOST}:{port}{path}"], LOAD_CPU),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return parse_wrk(proc.stdout)


def measure(
    name: str, setup: tuple[Path, Path, str], root: Path, duration: str, connections: int
) -> dict[str, Any]:
    plugins, data, token = setup
    settings, path, send_token = CASES[name]
    port = free_port()
    cmd = [
        str(venv_bin("chatterfix")),
        "start",
        "--host",
        HOST,
        "--port",
        str(port),
        "--plugins-dir",
        str(plugins),
        "--no-access-log",
    ]
    env = clean_env(CHATTERFIX_DATA_DIR=str(data), **settings)
    proc = start_process(pinned(cmd, SERVER_CPU), cwd=root, env=env)
    try:
        wait_for_200(port, OPEN, proc, timeout=60.0, interval=0.01)
        bearer = token if send_token else None
        status, body = request(port, path, bearer)
        # What the same route answers without a header: 401 when auth guards it.
        anonymous_status, _ = request(port, path, None)
        run_wrk(port, path, bearer, "2s", connections)  # warm-up, discarded
        cpu_before = process_cpu_s(proc.pid)
        result = run_wrk(port, path, bearer, duration, connections)
        cpu_s = process_cpu_s(proc.pid) - cpu_before
        result["server_cpu_s"] = cpu_s
        result["cpu_us_per_request"] = cpu_s / result["requests"] * 1e6 if cpu_s else None
        result["case"] = name
        result["path"] = path
        result["token_sent"] = send_token
        result["settings"] = settings
        result["response"] = {"status": status, "body": body}
        result["status_without_token"] = anonymous_status
        return result
    finally:
        stop_process(proc)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--duration", default="10s", help="wrk -d (default 10s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server (default 3)")
    args = parser.parse_args()
    if not have("wrk"):
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    if not venv_bin("chatterfix").exists():
        sys.exit(f"no chatterfix console script next to {sys.executable}")

    names = list(CASES)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cfx-bench-auth-") as tmp:
        root = Path(tmp)
        setup = prepare(root)
        for i in range(max(args.rounds, 1)):
            order = names if i % 2 == 0 else list(reversed(names))
            for name in order:
                result = measure(name, setup, root, args.duration, args.connections)
                runs[name].append(result)
                print(
                    f"round {i + 1} {name:<21} {result['rps']:>8.0f} req/s  "
                    f"p50 {result['p50_s'] * 1000:.2f} ms  p99 {result['p99_s'] * 1000:.2f} ms  "
                    f"server CPU {_us(result['cpu_us_per_request'])} us/request  "
                    f"non-2xx {result['non_2xx']}",
                    flush=True,
                )
    elapsed = time.perf_counter() - started

    best = {name: max(results, key=lambda r: r["rps"]) for name, results in runs.items()}

    def compare(name: str, baseline: str, label: str) -> dict[str, Any]:
        value, base = best[name], best[baseline]
        cpu_ratio = (
            base["cpu_us_per_request"] / value["cpu_us_per_request"]
            if value["cpu_us_per_request"] and base["cpu_us_per_request"]
            else float("nan")
        )
        return {
            "label": label,
            "case": name,
            "baseline": baseline,
            "ratio": ratio(value["rps"], base["rps"]),
            "cpu_ratio": cpu_ratio,
        }

    comparisons = {
        "protected": compare(
            "token, auth on", "no token, auth off", "protected route: token, auth on / auth off"
        ),
        "open": compare(
            "open route, auth on", "open route, auth off", "open route, no header: on / off"
        ),
        "no_cache": compare(
            "token, no cache",
            "no token, auth off",
            "protected route, token checked in SQLite each request / auth off",
        ),
    }

    def row(comparison: dict[str, Any]) -> list[object]:
        value, base = best[comparison["case"]], best[comparison["baseline"]]
        errors = value["non_2xx"] or value["socket_errors"] or "-"
        return [
            comparison["label"],
            f"{value['rps']:.0f}",
            f"{value['p50_s'] * 1000:.2f}",
            f"{value['p99_s'] * 1000:.2f}",
            _us(value["cpu_us_per_request"]),
            f"{base['rps']:.0f}",
            f"{base['p50_s'] * 1000:.2f}",
            f"{base['p99_s'] * 1000:.2f}",
            _us(base["cpu_us_per_request"]),
            f"{comparison['ratio']:.2f}",
            f"{comparison['cpu_ratio']:.2f}",
            errors,
        ]

    print_table(
        f"wrk -t1 -c{args.connections} -d{args.duration}, best of {args.rounds} "
        f"(server on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}; --no-access-log; "
        "CPU = server CPU us per request; CPU ratio = base CPU / CPU)",
        [
            "comparison",
            "req/s",
            "p50 ms",
            "p99 ms",
            "CPU us/req",
            "base req/s",
            "base p50",
            "base p99",
            "base CPU",
            "ratio",
            "CPU ratio",
            "errors",
        ],
        [row(c) for c in comparisons.values()],
    )
    primary = [comparisons["protected"]["ratio"], comparisons["open"]["ratio"]]
    met = min(primary) >= TARGET_RATIO
    print(
        f"Target: auth on / auth off >= {TARGET_RATIO} (protected and open route): "
        f"{primary[0]:.2f}, {primary[1]:.2f} -> {'met' if met else 'MISSED'}"
    )
    print("The no-cache row is the worst case, not part of the target.")
    for name in names:
        r = best[name]
        print(
            f"{name}: {r['path']} answered {r['response']['status']} {r['response']['body']}; "
            f"without a token {r['status_without_token']}"
        )
    print(f"Total time {elapsed:.0f} s")

    write_json(
        args.json,
        {
            "benchmark": "auth_overhead",
            "machine": machine_info(),
            "method": (
                f"chatterfix start --no-access-log per run; wrk -t1 -c{args.connections} "
                f"-d{args.duration} --latency after a 2 s warm-up; server pinned to CPU "
                f"{SERVER_CPU}, wrk to CPU {LOAD_CPU}; best of {args.rounds} alternating runs"
            ),
            "pinned": pinned(["true"], SERVER_CPU) != ["true"],
            "target": {"ratio_at_least": TARGET_RATIO, "met": met},
            "ratio": comparisons["protected"]["ratio"],
            "ratio_open": comparisons["open"]["ratio"],
            "ratio_no_cache": comparisons["no_cache"]["ratio"],
            "comparisons": comparisons,
            "best": best,
            "runs": runs,
            "cases": {
                name: {"settings": settings, "path": path, "token": send}
                for name, (settings, path, send) in CASES.items()
            },
        },
    )


if __name__ == "__main__":
    main()
