"""From ``chatterfix create-app`` to the first 200 from the new app through a gateway.

The promise to users is an app answering through the gateway in well under ten minutes; the
target here is under ten seconds. Two paths, each timed from spawning the first command to
the first 200 on ``GET /api/<name>/status`` (polled every 5 ms), ``ai_service`` template:

* **plugins folder**: ``chatterfix create-app -t ai_service -n NAME -o apps``, then
  ``chatterfix start --plugins-dir apps`` -- nothing installed;
* **--install**: ``chatterfix create-app ... --install`` (``pip install -e`` into the running
  environment), then ``chatterfix start``. Timed end to end, and in a second, step-by-step
  run for the split: generate (``create-app`` alone), install (the same ``pip install -e
  --no-build-isolation`` that ``--install`` runs), start (gateway spawn to the first 200).

Set-up (not timed): a virtual environment under ``bench/.cache/create_app/`` whose interpreter
also sees this environment's site-packages through a ``.pth`` file, so that ``--install``
installs into it and never into this environment; and a template store of its own
(``CHATTERFIX_TEMPLATES__STORE``). Each run works in a fresh folder (new app, new database);
one warm-up run per path is discarded, then the median of ``--runs`` runs is reported.
Baseline for scale: ``python -c pass`` and ``chatterfix --help``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    CACHE_DIR,
    HOST,
    arg_parser,
    clean_env,
    fmt_s,
    free_port,
    machine_info,
    median,
    print_table,
    start_process,
    stop_process,
    wait_for_200,
    write_json,
)

TARGET_S = 10.0
CACHE_ROOT = CACHE_DIR / "create_app"
TEMPLATE = "ai_service"


def make_venv(venv: Path) -> Path:
    """A venv (no pip of its own) that sees this environment's packages; its python."""
    python = venv / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    import site

    lines = [f"import site; site.addsitedir({path!r})" for path in site.getsitepackages()]
    Path(purelib, "_chatterfix_bench_parent.pth").write_text("\n".join(lines) + "\n")
    return python


def env_for(store: Path) -> dict[str, str]:
    return clean_env(CHATTERFIX_TEMPLATES__STORE=str(store), COLUMNS="200")


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Run ``cmd`` to completion; its wall time."""
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - started


def first_200(python: Path, cwd: Path, env: dict[str, str], route: str, *args: str) -> float:
    """Spawn ``chatterfix start``; the perf_counter of the first 200 on ``route``."""
    port = free_port()
    cmd = [str(python), "-m", "chatterfix", "start", "--host", HOST, "--port", str(port), *args]
    proc = start_process(cmd, cwd=cwd, env=env)
    try:
        return wait_for_200(port, route, proc, timeout=120)
    finally:
        stop_process(proc)


def plugins_folder_run(python: Path, store: Path, name: str) -> dict[str, float]:
    env = env_for(store)
    with tempfile.TemporaryDirectory(prefix="bench-create-app-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        create = [str(python), "-m", "chatterfix", "create-app", "-t", TEMPLATE, "-n", name]
        generate = run([*create, "-o", "apps"], work, env)
        ready = first_200(python, work, env, f"/api/{name}/status", "--plugins-dir", "apps")
        total = ready - started
    return {"total_s": total, "generate_s": generate, "start_s": total - generate}


def uninstall(python: Path, name: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "uninstall", "-q", "-y", name.replace("_", "-")],
        env=clean_env(),
        capture_output=True,
        check=False,
    )


def install_run(python: Path, store: Path, name: str) -> dict[str, float]:
    """``create-app --install`` then ``chatterfix start``, end to end."""
    env = env_for(store)
    with tempfile.TemporaryDirectory(prefix="bench-create-app-") as tmp:
        work = Path(tmp)
        try:
            started = time.perf_counter()
            create = [str(python), "-m", "chatterfix", "create-app", "-t", TEMPLATE, "-n", name]
            create_and_install = run([*create, "--install"], work, env)
            ready = first_200(python, work, env, f"/api/{name}/status")
        finally:
            uninstall(python, name)
    total = ready - started
    return {"total_s": total, "create_and_install_s": create_and_install}


def install_split_run(python: Path, store: Path, name: str) -> dict[str, float]:
    """The same steps one by one, for the split: generate / install / start."""
    env = env_for(store)
    with tempfile.TemporaryDirectory(prefix="bench-create-app-") as tmp:
        work = Path(tmp)
        try:
            create = [str(python), "-m", "chatterfix", "create-app", "-t", TEMPLATE, "-n", name]
            generate = run(create, work, env)
            pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            install = run([*pip, "--no-build-isolation", "-e", name], work, env)
            spawned = time.perf_counter()
            ready = first_200(python, work, env, f"/api/{name}/status")
        finally:
            uninstall(python, name)
    return {"generate_s": generate, "install_s": install, "start_s": ready - spawned}


def baselines(python: Path, runs: int) -> dict[str, float]:
    env = clean_env()
    cwd = Path(tempfile.gettempdir())
    bare = [run([str(python), "-c", "pass"], cwd, env) for _ in range(runs)]
    helps = [run([str(python), "-m", "chatterfix", "--help"], cwd, env) for _ in range(runs)]
    return {"python_s": median(bare), "help_s": median(helps)}


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: median([row[key] for row in rows]) for key in rows[0]}


def main() -> None:
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    python = make_venv(CACHE_ROOT / "venv")
    store = CACHE_ROOT / "template-store"
    stamp = int(time.time())

    results: dict[str, list[dict[str, float]]] = {"folder": [], "install": [], "split": []}
    for index in range(args.runs + 1):  # the first round is a warm-up
        name = f"bench_app_{stamp}_{index}"
        folder = plugins_folder_run(python, store, f"{name}_f")
        installed = install_run(python, store, f"{name}_i")
        split = install_split_run(python, store, f"{name}_s")
        if index == 0:
            continue
        results["folder"].append(folder)
        results["install"].append(installed)
        results["split"].append(split)
    folder, installed, split = (medians(results[key]) for key in ("folder", "install", "split"))
    base = baselines(python, args.runs)

    met = max(folder["total_s"], installed["total_s"]) < TARGET_S
    print_table(
        f"chatterfix create-app to the first 200 through the gateway "
        f"({TEMPLATE}, median of {args.runs})",
        ["path", "total", "generate", "install", "start", "target"],
        [
            [
                "plugins folder (no install)",
                fmt_s(folder["total_s"]),
                fmt_s(folder["generate_s"]),
                "-",
                fmt_s(folder["start_s"]),
                f"< {TARGET_S:.0f} s: {'met' if folder['total_s'] < TARGET_S else 'MISSED'}",
            ],
            [
                "create-app --install, end to end",
                fmt_s(installed["total_s"]),
                f"{fmt_s(installed['create_and_install_s'])} (with install)",
                "",
                fmt_s(installed["total_s"] - installed["create_and_install_s"]),
                f"< {TARGET_S:.0f} s: {'met' if installed['total_s'] < TARGET_S else 'MISSED'}",
            ],
            [
                "  the same, step by step",
                fmt_s(split["generate_s"] + split["install_s"] + split["start_s"]),
                fmt_s(split["generate_s"]),
                fmt_s(split["install_s"]),
                fmt_s(split["start_s"]),
                "",
            ],
            ["python -c pass (for scale)", fmt_s(base["python_s"]), "", "", "", ""],
            ["chatterfix --help (for scale)", fmt_s(base["help_s"]), "", "", "", ""],
        ],
    )
    write_json(
        args.json,
        {
            "benchmark": "create_app",
            "machine": machine_info(),
            "template": TEMPLATE,
            "runs": args.runs,
            "target": {"total_s_below": TARGET_S, "met": met},
            "plugins_folder": folder,
            "install": installed,
            "install_split": split,
            "baselines": base,
            "samples": results,
        },
    )


if __name__ == "__main__":
    main()
