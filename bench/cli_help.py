"""``chatterfix --help`` wall time against the interpreter's own start-up (``python -c pass``).

Both commands use this environment's interpreter (the ``chatterfix`` console script sits next
to it). ``hyperfine`` runs each with warm-up runs and exports the medians as JSON. A third,
diagnostic command runs ``chatterfix --help`` with ``CHATTERFIX_NO_PLUGIN_COMMANDS=1`` to show
what loading plugin-contributed commands costs.

Then one ``python -X importtime`` run of ``main(["--help"])`` tells which heavy packages the
help screen imports (Starlette, SQLAlchemy, uvicorn must not be among them) and where the
import time goes, by top-level package.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import (
    arg_parser,
    clean_env,
    fmt_s,
    have,
    machine_info,
    print_table,
    ratio,
    venv_bin,
    write_json,
)

TARGET_S = 0.25
HEAVY = ("starlette", "sqlalchemy", "uvicorn", "httpx", "copier", "chatterfix.gateway")
WATCHED = (*HEAVY, "chatterfix.platform", "chatterfix.plugins", "pluggy", "anyio")

PROBE = f"""
import io, json, sys, contextlib
from chatterfix.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
print(json.dumps({{
    "modules": len(sys.modules),
    "loaded": {{name: name in sys.modules for name in {WATCHED!r}}},
}}))
"""


def run_hyperfine(runs: int, warmup: int) -> dict[str, dict[str, Any]]:
    chatterfix = str(venv_bin("chatterfix"))
    commands = {
        "chatterfix --help": [chatterfix, "--help"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "chatterfix --help (no plugin commands)": [
            "env",
            "CHATTERFIX_NO_PLUGIN_COMMANDS=1",
            chatterfix,
            "--help",
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "hyperfine.json"
        cmd = [
            "hyperfine",
            "-N",
            "--style",
            "basic",
            "--warmup",
            str(warmup),
            "--runs",
            str(runs),
            "--export-json",
            str(export),
        ]
        for name, argv in commands.items():
            cmd += ["--command-name", name, shlex.join(argv)]
        subprocess.run(
            cmd,
            check=True,
            cwd=tmp,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
        data = json.loads(export.read_text())
    results = {}
    for item in data["results"]:
        results[item["command"]] = {
            "median_s": item["median"],
            "mean_s": item["mean"],
            "stddev_s": item["stddev"],
            "min_s": item["min"],
            "max_s": item["max"],
            "runs": len(item["times"]),
        }
    return results


def import_report() -> dict[str, Any]:
    """Which watched modules ``main(["--help"])`` imports, and import time per package."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        timeout=60,
    )
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    self_us: dict[str, int] = defaultdict(int)
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_time, _cumulative, name = line.removeprefix("import time:").split("|")
        self_us[name.strip().split(".")[0]] += int(self_time)
    total_us = sum(self_us.values())
    top = sorted(self_us.items(), key=lambda item: item[1], reverse=True)[:12]
    return {
        "modules_after_help": probe["modules"],
        "loaded": probe["loaded"],
        "import_total_s": total_us / 1e6,
        "import_by_package_s": {name: us / 1e6 for name, us in top},
    }


def main() -> None:
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if not have("hyperfine"):
        sys.exit("hyperfine is not installed (apt-get install -y hyperfine)")
    if not venv_bin("chatterfix").exists():
        sys.exit(f"no chatterfix console script next to {sys.executable}")

    timings = run_hyperfine(max(args.runs, 10), args.warmup)
    imports = import_report()
    help_s = timings["chatterfix --help"]["median_s"]
    base_s = timings["python -c pass"]["median_s"]
    bare_help_s = timings["chatterfix --help (no plugin commands)"]["median_s"]

    print_table(
        "chatterfix --help vs python -c pass (hyperfine, median)",
        ["command", "median", "min", "max", "runs", "baseline", "ratio", "target"],
        [
            [
                "chatterfix --help",
                fmt_s(help_s),
                fmt_s(timings["chatterfix --help"]["min_s"]),
                fmt_s(timings["chatterfix --help"]["max_s"]),
                timings["chatterfix --help"]["runs"],
                fmt_s(base_s),
                f"{ratio(help_s, base_s):.1f}x",
                f"< {TARGET_S} s: {'met' if help_s < TARGET_S else 'MISSED'}",
            ],
            [
                "  (diagnostic) without plugin commands",
                fmt_s(bare_help_s),
                fmt_s(timings["chatterfix --help (no plugin commands)"]["min_s"]),
                fmt_s(timings["chatterfix --help (no plugin commands)"]["max_s"]),
                timings["chatterfix --help (no plugin commands)"]["runs"],
                fmt_s(base_s),
                f"{ratio(bare_help_s, base_s):.1f}x",
                "",
            ],
            [
                "python -c pass",
                fmt_s(base_s),
                fmt_s(timings["python -c pass"]["min_s"]),
                fmt_s(timings["python -c pass"]["max_s"]),
                timings["python -c pass"]["runs"],
                "",
                "1.0x",
                "",
            ],
        ],
    )
    loaded = imports["loaded"]
    print_table(
        f"Modules imported by main(['--help']) ({imports['modules_after_help']} in sys.modules)",
        ["module", "imported"],
        [[name, "yes" if loaded[name] else "no"] for name in WATCHED],
    )
    print_table(
        "Import time by top-level package (python -X importtime, self time summed)",
        ["package", "time"],
        [[name, fmt_s(sec)] for name, sec in imports["import_by_package_s"].items()]
        + [["(all imports)", fmt_s(imports["import_total_s"])]],
    )
    heavy = [name for name in HEAVY if loaded[name]]
    print(f"Heavy modules imported by --help: {', '.join(heavy) if heavy else 'none'}")

    write_json(
        args.json,
        {
            "benchmark": "cli_help",
            "machine": machine_info(),
            "target": {"median_s_below": TARGET_S, "met": help_s < TARGET_S},
            "median_s": help_s,
            "baseline_median_s": base_s,
            "ratio": ratio(help_s, base_s),
            "median_without_plugin_commands_s": bare_help_s,
            "timings": timings,
            "heavy_modules_imported": heavy,
            "imports": imports,
        },
    )


if __name__ == "__main__":
    main()
