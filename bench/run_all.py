"""Run every benchmark and collect their figures in ``bench/results.json``.

Each benchmark runs as its own process with this interpreter (``python bench/<name>.py
--json <file>``), prints its own table, and stops every process it started. Run a subset
with ``--only cli_help gateway_rps``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import BENCH_DIR, machine_info, print_table

BENCHMARKS = (
    "cli_help",
    "startup_plugins",
    "gateway_rps",
    "events_inprocess",
    "events_transport",
    "database_query",
    "auth_overhead",
    "ai_overhead",
    "create_app",
    "proxy",
    "pipeline",
)
RESULTS = BENCH_DIR / "results.json"
TIMEOUT_S = 600


def source_revision() -> dict[str, Any]:
    """The commit measured, and whether ``src/`` had uncommitted changes at the time."""

    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, timeout=30
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "src_modified": bool(git("status", "-s", "src"))}


def summary_rows(results: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    if "cli_help" in results:
        r = results["cli_help"]
        rows.append(
            [
                "chatterfix --help (median)",
                f"{r['median_s'] * 1000:.0f} ms",
                f"{r['baseline_median_s'] * 1000:.0f} ms (python -c pass)",
                f"{r['ratio']:.1f}x",
                "< 250 ms",
                "met" if r["target"]["met"] else "MISSED",
            ]
        )
    if "startup_plugins" in results:
        r = results["startup_plugins"]
        rows.append(
            [
                "start to first /health 200, 100 plugins",
                f"{r['t100_s'] * 1000:.0f} ms",
                f"{r['t0_s'] * 1000:.0f} ms (0 plugins)",
                f"{r['ratio']:.2f}x",
                "< 2 s",
                "met" if r["target"]["met"] else "MISSED",
            ]
        )
        rows.append(["  per-plugin cost", f"{r['per_plugin_s'] * 1000:.2f} ms", "", "", "", ""])
    if "gateway_rps" in results:
        r = results["gateway_rps"]
        gateway, bare = r["best"]["gateway"], r["best"]["bare"]
        rows.append(
            [
                "GET /api/hello req/s (chatterfix start)",
                f"{gateway['rps']:.0f}",
                f"{bare['rps']:.0f} (bare Starlette)",
                f"{r['ratio']:.2f}",
                ">= 0.8",
                "met" if r["target"]["met"] else "MISSED",
            ]
        )
        gateway, bare = r["best"]["gateway, quiet"], r["best"]["bare, quiet"]
        rows.append(
            [
                "  same, both at warning, no access log",
                f"{gateway['rps']:.0f}",
                f"{bare['rps']:.0f} (bare Starlette)",
                f"{r['ratio_quiet']:.2f}",
                "",
                "",
            ]
        )
    if "events_inprocess" in results:
        r = results["events_inprocess"]
        for label, key in (("1 handler", "one_handler"), ("10 handlers", "ten_handlers")):
            row = r[key]
            rows.append(
                [
                    f"events/s emit -> {label}",
                    f"{row['bus_per_s']:,.0f}",
                    f"{row['bare_per_s']:,.0f} (bare await loop)",
                    f"{row['ratio']:.2f}",
                    ">= 100,000/s" if key == "one_handler" else "",
                    ("met" if r["target"]["met"] else "MISSED") if key == "one_handler" else "",
                ]
            )
        memory = r["memory"]
        rows.append(
            [
                f"  RSS growth after {memory['events']:,} events",
                f"{memory['rss_growth_kib']:,} KiB",
                "",
                "",
                "bounded",
                "",
            ]
        )
    if "events_transport" in results:
        r = results["events_transport"]
        for broker, row in r["brokers"].items():
            rows.append(
                [
                    f"events/s between processes, {broker}, {r.get('tasks', 1)} emitting tasks",
                    f"{row['ours']['per_s']:,.0f}",
                    f"{row['bare']['per_s']:,.0f} (bare client)",
                    f"{row['ratio']:.2f}",
                    ">= 10,000/s",
                    "met" if row["ours"]["per_s"] >= 10_000 else "MISSED",
                ]
            )
    if "database_query" in results:
        r = results["database_query"]
        labels = {"select": "SELECT by key", "insert": "INSERT"}
        for backend, result in r["backends"].items():
            for op, label in labels.items():
                row = result[op]
                rows.append(
                    [
                        f"execute_query round trips/s, {backend}, {label}",
                        f"{row['best']['service']['ops_per_s']:,.0f}",
                        f"{row['best']['raw']['ops_per_s']:,.0f} (raw SQLAlchemy Core)",
                        f"{row['ratio']:.2f}",
                        ">= 0.8",
                        "met" if row["ratio"] >= 0.8 else "MISSED",
                    ]
                )
    if "auth_overhead" in results:
        r = results["auth_overhead"]
        for key, label in (
            ("protected", "protected route req/s, token, auth on"),
            ("open", "GET /api/hello req/s, no header, auth on"),
            ("no_cache", "  protected route, token cache off (worst case)"),
        ):
            c = r["comparisons"][key]
            value, base = r["best"][c["case"]], r["best"][c["baseline"]]
            primary = key != "no_cache"
            rows.append(
                [
                    label,
                    f"{value['rps']:.0f}",
                    f"{base['rps']:.0f} (auth off)",
                    f"{c['ratio']:.2f}",
                    ">= 0.85" if primary else "",
                    ("met" if c["ratio"] >= 0.85 else "MISSED") if primary else "",
                ]
            )
    if "create_app" in results:
        r = results["create_app"]
        for label, total in (
            ("create-app to first 200, plugins folder", r["plugins_folder"]["total_s"]),
            ("create-app --install to first 200", r["install"]["total_s"]),
        ):
            rows.append(
                [
                    label,
                    f"{total:.2f} s",
                    f"{r['baselines']['help_s'] * 1000:.0f} ms (chatterfix --help)",
                    "",
                    "< 10 s",
                    "met" if total < 10 else "MISSED",
                ]
            )
    if "pipeline" in results:
        r = results["pipeline"]
        full, bare = r["best"]["gateway, full pipeline"], r["best"]["bare"]
        rows.append(
            [
                "plugin route req/s, full default pipeline",
                f"{full['rps']:.0f} (p99 {full['p99_s'] * 1000:.1f} ms)",
                f"{bare['rps']:.0f} (bare Starlette, p99 {bare['p99_s'] * 1000:.1f} ms)",
                f"{r['ratio']:.2f}",
                ">= 0.7",
                "met" if r["target"]["met"] else "MISSED",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    revision = source_revision()
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            out = Path(tmp) / f"{name}.json"
            print(f"\n### {name}\n", flush=True)
            proc = subprocess.Popen(
                [sys.executable, str(BENCH_DIR / f"{name}.py"), "--json", str(out)]
            )
            try:
                proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                failures[name] = f"timed out after {TIMEOUT_S} s"
            except KeyboardInterrupt:
                failures[name] = "interrupted"
            finally:
                if proc.poll() is None:
                    # SIGTERM lets the benchmark's finally blocks stop its servers.
                    proc.terminate()
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            if failures.get(name) == "interrupted":
                break
            if name in failures:
                continue
            if proc.returncode != 0 or not out.is_file():
                failures[name] = f"exited with code {proc.returncode}"
                continue
            results[name] = {
                **json.loads(out.read_text()),
                "source": revision,
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }

    # A partial run (--only) updates its benchmarks and keeps the others' last figures.
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    document = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "source": revision,
        "duration_s": round(time.perf_counter() - started, 1),
        "results": {**previous.get("results", {}), **results},
        "failures": failures,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print_table(
        "Summary",
        ["measure", "value", "baseline", "ratio", "target", "status"],
        summary_rows(results),
    )
    print(f"wrote {args.output}")
    if failures:
        for name, reason in failures.items():
            print(f"{name}: {reason}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
