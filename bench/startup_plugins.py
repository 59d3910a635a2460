"""Gateway start-up with 100 installed plugins against start-up with none.

Set-up (cached under ``bench/.cache/startup_plugins/<key>/``, one per generator version and
source environment):

* 100 plugin distributions are generated, each a real project: its own ``pyproject.toml``
  (hatchling), a ``[project.entry-points.chatterfix]`` entry point and a package whose
  ``register_routes`` returns one Starlette route ``/api/benchN/ping`` and whose
  ``health_check`` reports healthy.
* Two virtual environments are made with the same interpreter: ``venv-0`` and ``venv-100``.
  Neither copies ChatterFix: a ``.pth`` file runs ``site.addsitedir()`` on this environment's
  site-packages, so ChatterFix (and its ``hello`` entry point) and its dependencies are
  importable exactly as installed here. Each venv gets a ``chatterfix`` console script
  equivalent to the one pip writes.
* All 100 plugin folders are installed into ``venv-100`` with ONE
  ``pip install --no-deps --no-build-isolation`` command: pip builds a wheel per plugin and
  installs it, so each plugin is a normal installed distribution (``*.dist-info`` with
  ``entry_points.txt``, byte-compiled package) found through ``importlib.metadata`` as any
  third-party plugin would be.

Measurements:

* time from spawning ``chatterfix start`` to the first 200 on ``GET /health`` (polled every
  5 ms with ``http.client``), median of 5 runs per environment after one discarded warm-up
  run, runs alternating between the two environments;
* per-plugin discovery cost = (t100 - t0) / 100;
* in-process, in a fresh interpreter per sample (median of 5): import of
  ``chatterfix.platform``, ``Platform()`` construction (discovery, import, registration),
  building ``platform.asgi_app``, and starting every plugin (``async with platform``);
  plus the bare ``importlib.metadata.entry_points(group="chatterfix")`` scan.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    CACHE_DIR,
    HOST,
    arg_parser,
    clean_env,
    fmt_s,
    free_port,
    http_get,
    machine_info,
    median,
    print_table,
    ratio,
    start_process,
    stop_process,
    wait_for_200,
    write_json,
)

PLUGIN_COUNT = 100
TARGET_S = 2.0
CACHE_ROOT = CACHE_DIR / "startup_plugins"

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "chatterfix-bench-plugin-{n}"
version = "1.0.{n}"
description = "Benchmark plugin {n}: one route and a health check"
requires-python = ">=3.11"
dependencies = ["chatterfix"]

[project.entry-points.chatterfix]
bench{n} = "chatterfix_bench_plugin_{n}"

[tool.hatch.build.targets.wheel]
packages = ["chatterfix_bench_plugin_{n}"]
"""

MODULE = '''\
"""Benchmark plugin {n}: one route and a health check."""

from __future__ import annotations

from typing import Any

import chatterfix


@chatterfix.hookimpl
def register_routes(platform: Any) -> list[Any]:
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ping(request: Any) -> JSONResponse:
        return JSONResponse({{"plugin": "bench{n}", "pong": True}})

    return [Route("/api/bench{n}/ping", ping, methods=["GET"])]


@chatterfix.hookimpl
def health_check() -> dict[str, str]:
    return {{"status": "healthy"}}
'''

CONSOLE_SCRIPT = """\
#!{python}
import sys

from chatterfix.cli import main

if __name__ == "__main__":
    sys.exit(main())
"""

INPROCESS_PROBE = """
import json, time
t0 = time.perf_counter()
from chatterfix.platform import Platform
t1 = time.perf_counter()
platform = Platform()
t2 = time.perf_counter()
app = platform.asgi_app
t3 = time.perf_counter()
import anyio

running = []

async def start_stop():
    async with platform:
        started = time.perf_counter()
        running.extend(platform.plugins.running())
    return started

t4 = anyio.run(start_stop)
print(json.dumps({
    "import_s": t1 - t0,
    "platform_s": t2 - t1,
    "asgi_app_s": t3 - t2,
    "start_plugins_s": t4 - t3,
    "plugins": len(platform.plugins.records),
    "running": len(running),
    "load_errors": [e.message for e in platform.plugins.load_errors],
}))
"""

SCAN_PROBE = """
import importlib.metadata, json, time
t0 = time.perf_counter()
eps = importlib.metadata.entry_points(group="chatterfix")
names = [ep.dist.metadata["Name"] for ep in eps]
t1 = time.perf_counter()
print(json.dumps({"scan_s": t1 - t0, "entry_points": len(names)}))
"""

PROFILE_PROBE = """
import cProfile, pstats, io
from chatterfix.platform import Platform
profile = cProfile.Profile()
profile.enable()
Platform()
profile.disable()
out = io.StringIO()
stats = pstats.Stats(profile, stream=out).sort_stats("cumulative")
stats.print_stats(35)
print(out.getvalue())
"""


def cache_key() -> str:
    parent = sysconfig.get_paths()
    material = json.dumps(
        [
            PYPROJECT,
            MODULE,
            CONSOLE_SCRIPT,
            PLUGIN_COUNT,
            sys.version,
            sys.executable,
            parent["purelib"],
            parent["platlib"],
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def make_venv(venv: Path) -> None:
    """A venv without pip whose interpreter also sees this environment's site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run(
        [str(venv_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    parent = sysconfig.get_paths()
    dirs = dict.fromkeys([parent["purelib"], parent["platlib"]])
    lines = [f"import site; site.addsitedir({d!r})" for d in dirs]
    (Path(site) / "_chatterfix_bench_parent.pth").write_text("\n".join(lines) + "\n")
    script = venv / "bin" / "chatterfix"
    script.write_text(CONSOLE_SCRIPT.format(python=venv_python(venv)))
    script.chmod(0o755)


def generate_plugins(root: Path) -> list[Path]:
    folders = []
    for n in range(PLUGIN_COUNT):
        folder = root / f"plugin{n}"
        package = folder / f"chatterfix_bench_plugin_{n}"
        package.mkdir(parents=True)
        (folder / "pyproject.toml").write_text(PYPROJECT.format(n=n))
        (package / "__init__.py").write_text(MODULE.format(n=n))
        folders.append(folder)
    return folders


def ensure_environments(work: Path) -> dict[str, Any]:
    """Build (or reuse) the two venvs in ``work``; returns how the cache was obtained."""
    stamp = work / "complete"
    if stamp.is_file():
        return {"cached": True, "build_s": None, "install_s": None}
    started = time.perf_counter()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    folders = generate_plugins(work / "plugins")
    make_venv(work / "venv-0")
    venv100 = work / "venv-100"
    make_venv(venv100)
    python = str(venv_python(venv100))
    pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check"]
    env = dict(os.environ)
    has_backend = subprocess.run([python, "-c", "import hatchling"], capture_output=True)
    if has_backend.returncode != 0:
        # Keep the build backend out of venv-100 so that both venvs hold the same packages:
        # it goes to a side folder that only the install command sees (PYTHONPATH).
        tools = work / "build-tools"
        print(f"hatchling is not importable here; installing it into {tools} for the build")
        subprocess.run(
            [*pip, "install", "-q", "--target", str(tools), "hatchling"], check=True, timeout=600
        )
        env["PYTHONPATH"] = str(tools)
    print(f"installing {PLUGIN_COUNT} plugin distributions with one pip command ...")
    install_started = time.perf_counter()
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-build-isolation", *map(str, folders)],
        check=True,
        env=env,
        timeout=600,
    )
    install_s = time.perf_counter() - install_started
    stamp.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    return {"cached": False, "build_s": time.perf_counter() - started, "install_s": install_s}


def time_to_health(venv: Path, workdir: Path, check: bool = False) -> tuple[float, dict[str, Any]]:
    """Seconds from spawning ``chatterfix start`` to the first 200 on ``/health``."""
    port = free_port()
    cmd = [str(venv / "bin" / "chatterfix"), "start", "--host", HOST, "--port", str(port)]
    started = time.perf_counter()
    proc = start_process(cmd, cwd=workdir, env=clean_env())
    try:
        answered = wait_for_200(port, "/health", proc, timeout=60.0, interval=0.005)
        details: dict[str, Any] = {}
        if check:
            _, body = http_get(port, "/platform/plugins", timeout=10.0)
            data = json.loads(body)
            _, health = http_get(port, "/health", timeout=10.0)
            details = {
                "plugins": len(data["plugins"]),
                "running": sum(1 for p in data["plugins"] if p["status"] == "running"),
                "load_errors": len(data["load_errors"]),
                "health": json.loads(health)["status"],
            }
            if any(p["name"] == "bench7" for p in data["plugins"]):
                status, _ = http_get(port, "/api/bench7/ping")
                details["bench7_ping_status"] = status
        return answered - started, details
    finally:
        stop_process(proc)


def run_code(venv: Path, code: str, workdir: Path) -> str:
    """Run ``code`` with the venv's interpreter in a clean environment; return its stdout."""
    proc = subprocess.run(
        [str(venv_python(venv)), "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=workdir,
        env=clean_env(),
        timeout=120,
    )
    return proc.stdout


def probe(venv: Path, code: str, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(run_code(venv, code, workdir).strip().splitlines()[-1])
    return result


def main() -> None:
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--profile", action="store_true", help="Also print a cProfile of Platform() (100)."
    )
    args = parser.parse_args()

    # One cache per generator version and source environment (this venv, a nox venv, ...).
    work = CACHE_ROOT / cache_key()
    setup = ensure_environments(work)
    if setup["cached"]:
        print(f"using cached environments in {work}")
    else:
        print(
            f"built environments in {setup['build_s']:.1f} s "
            f"(one pip install of {PLUGIN_COUNT} plugins: {setup['install_s']:.1f} s)"
        )
    envs = {0: work / "venv-0", PLUGIN_COUNT: work / f"venv-{PLUGIN_COUNT}"}
    runs = max(args.runs, 1)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checks = {}
        for count, venv in envs.items():  # warm-up (discarded) and a sanity check
            _, checks[count] = time_to_health(venv, workdir, check=True)
        samples: dict[int, list[float]] = {count: [] for count in envs}
        for i in range(runs):
            order = list(envs) if i % 2 == 0 else list(reversed(envs))
            for count in order:
                seconds, _ = time_to_health(envs[count], workdir)
                samples[count].append(seconds)

        inprocess: dict[int, dict[str, Any]] = {}
        for count, venv in envs.items():
            probes = [probe(venv, INPROCESS_PROBE, workdir) for _ in range(runs)]
            scans = [probe(venv, SCAN_PROBE, workdir) for _ in range(runs)]
            inprocess[count] = {
                key: median([p[key] for p in probes])
                for key in ("import_s", "platform_s", "asgi_app_s", "start_plugins_s")
            }
            inprocess[count]["scan_s"] = median([s["scan_s"] for s in scans])
            inprocess[count]["entry_points"] = scans[0]["entry_points"]
            inprocess[count]["plugins"] = probes[0]["plugins"]
            inprocess[count]["running"] = probes[0]["running"]
            inprocess[count]["load_errors"] = probes[0]["load_errors"]

        profile_text = None
        if args.profile:
            profile_text = run_code(envs[PLUGIN_COUNT], PROFILE_PROBE, workdir)

    t0 = median(samples[0])
    t100 = median(samples[PLUGIN_COUNT])
    per_plugin = (t100 - t0) / PLUGIN_COUNT
    met = t100 < TARGET_S
    base, full = inprocess[0], inprocess[PLUGIN_COUNT]

    print_table(
        "Sanity check (first run): plugins seen by the gateway in each environment",
        ["environment", "plugins", "running", "load errors", "/health", "/api/bench7/ping"],
        [
            [
                f"venv-{count}",
                c["plugins"],
                c["running"],
                c["load_errors"],
                c["health"],
                c.get("bench7_ping_status", "-"),
            ]
            for count, c in checks.items()
        ],
    )
    print_table(
        f"chatterfix start: spawn to first 200 on /health (median of {runs})",
        ["measure", f"{PLUGIN_COUNT} plugins", "0 plugins (baseline)", "ratio", "target"],
        [
            [
                "spawn -> first 200 /health",
                fmt_s(t100),
                fmt_s(t0),
                f"{ratio(t100, t0):.2f}x",
                f"< {TARGET_S} s: {'met' if met else 'MISSED'}",
            ],
            [
                "  all samples",
                " ".join(f"{s:.3f}" for s in samples[PLUGIN_COUNT]),
                " ".join(f"{s:.3f}" for s in samples[0]),
                "",
                "",
            ],
            ["per-plugin cost (t100 - t0) / 100", fmt_s(per_plugin), "", "", ""],
        ],
    )
    rows = []
    for key, label in (
        ("import_s", "import chatterfix.platform"),
        ("platform_s", "Platform() construction"),
        ("asgi_app_s", "platform.asgi_app (gateway build)"),
        ("start_plugins_s", "start all plugins (async with)"),
        ("scan_s", "entry_points(group='chatterfix') scan"),
    ):
        rows.append(
            [
                label,
                fmt_s(full[key]),
                fmt_s(base[key]),
                f"{ratio(full[key], base[key]):.1f}x",
                fmt_s((full[key] - base[key]) / PLUGIN_COUNT),
            ]
        )
    print_table(
        f"In process, fresh interpreter per sample (median of {runs})",
        ["step", f"{PLUGIN_COUNT} plugins", "0 plugins (baseline)", "ratio", "per plugin"],
        rows,
    )
    print(
        f"plugins found: {full['plugins']} (entry points {full['entry_points']}) with "
        f"{PLUGIN_COUNT} installed, {base['plugins']} (entry points {base['entry_points']}) "
        "without; the built-in 'hello' plugin is present in both."
    )
    if profile_text:
        print("\ncProfile of Platform() with 100 plugins installed:\n")
        print(profile_text)

    write_json(
        args.json,
        {
            "benchmark": "startup_plugins",
            "machine": machine_info(),
            "method": (
                f"{PLUGIN_COUNT} generated hatchling projects installed with one "
                "`pip install --no-deps --no-build-isolation` into a venv that reaches this "
                "environment's site-packages through a .pth file; spawn of `chatterfix start` "
                "to first 200 on /health, polled every 5 ms"
            ),
            "setup": setup,
            "target": {"t100_s_below": TARGET_S, "met": met},
            "t0_s": t0,
            "t100_s": t100,
            "ratio": ratio(t100, t0),
            "per_plugin_s": per_plugin,
            "samples_s": {str(k): v for k, v in samples.items()},
            "sanity": {str(k): v for k, v in checks.items()},
            "in_process": {str(k): v for k, v in inprocess.items()},
        },
    )


if __name__ == "__main__":
    main()
