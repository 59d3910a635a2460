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
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    COMPARISON_HEADERS,
    HOST,
    add_wrk_options,
    arg_parser,
    chatterfix_start,
    clean_env,
    comparison_row,
    cpu_ratio,
    create_api_token,
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
    wait_for_200,
    write_json,
)

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
    token = create_api_token(root, data)
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


def measure(
    name: str, setup: tuple[Path, Path, str], root: Path, duration: str, connections: int
) -> dict[str, Any]:
    plugins, data, token = setup
    settings, path, send_token = CASES[name]
    port = free_port()
    cmd = chatterfix_start(port, "--plugins-dir", str(plugins), "--no-access-log")
    env = clean_env(CHATTERFIX_DATA_DIR=str(data), **settings)
    proc = start_process(pinned(cmd, SERVER_CPU), cwd=root, env=env)
    try:
        wait_for_200(port, OPEN, proc, timeout=60.0, interval=0.01)
        bearer = token if send_token else None
        status, body = request(port, path, bearer)
        # What the same route answers without a header: 401 when auth guards it.
        anonymous_status, _ = request(port, path, None)
        headers = [f"Authorization: Bearer {bearer}"] if bearer else []
        result = run_wrk_with_cpu(port, path, duration, connections, LOAD_CPU, [proc.pid], headers)
        result["case"] = name
        result["path"] = path
        result["token_sent"] = send_token
        result["settings"] = settings
        result["response"] = {"status": status, "body": body}
        result["status_without_token"] = anonymous_status
        return result
    finally:
        stop_process(proc)


def main() -> None:
    parser = arg_parser(__doc__ or "")
    add_wrk_options(parser)
    args = parser.parse_args()
    require_tools("wrk")
    require_chatterfix()

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
                print(round_line(i + 1, name, result, 21), flush=True)
    elapsed = time.perf_counter() - started

    best = {name: max(results, key=lambda r: r["rps"]) for name, results in runs.items()}

    def compare(name: str, baseline: str, label: str) -> dict[str, Any]:
        value, base = best[name], best[baseline]
        return {
            "label": label,
            "case": name,
            "baseline": baseline,
            "ratio": ratio(value["rps"], base["rps"]),
            "cpu_ratio": cpu_ratio(value, base),
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
        return comparison_row(
            comparison["label"], best[comparison["case"]], best[comparison["baseline"]]
        )

    print_table(
        f"wrk -t1 -c{args.connections} -d{args.duration}, best of {args.rounds} "
        f"(server on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}; --no-access-log; "
        "CPU = server CPU us per request; CPU ratio = base CPU / CPU)",
        COMPARISON_HEADERS,
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
