"""Helpers shared by the benchmark scripts: processes, ports, polling, tables, JSON output.

Benchmarks are not tests: nothing here asserts on a timing. Every process a script starts is
started in its own session (process group) and stopped with :func:`stop_process`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
HOST = "127.0.0.1"


def venv_bin(name: str) -> Path:
    """A console script or the interpreter of the environment running this script."""
    return Path(sys.executable).parent / name


PYCACHE_DIR = CACHE_DIR / "pycache"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for measured processes, plus ``extra``.

    No ``CHATTERFIX_*`` setting and no ``PYTHONPATH`` leak in. Bytecode caching is on, as in
    an ordinary installation, even where ``PYTHONDONTWRITEBYTECODE`` is set; the cache lives
    under ``bench/.cache/pycache`` (``PYTHONPYCACHEPREFIX``) so that source trees are left
    untouched. Warm-up runs fill it, so measured runs never pay for compiling.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATTERFIX_")}
    for name in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME"):
        env.pop(name, None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_process(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session so that its whole process group can be stopped."""
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(list(cmd), start_new_session=True, **kwargs)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the process group of ``proc``."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
    # Children left behind in the group (there should be none).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=timeout)


@contextlib.contextmanager
def running(cmd: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_process(cmd, **kwargs)
    try:
        yield proc
    finally:
        stop_process(proc)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for_200(
    port: int,
    path: str,
    proc: subprocess.Popen[bytes],
    timeout: float = 60.0,
    interval: float = 0.005,
) -> float:
    """Poll ``path`` every ``interval`` s until it answers 200; the perf_counter at that point.

    Raises RuntimeError if the process exits or ``timeout`` passes first.
    """
    deadline = time.perf_counter() + timeout
    while True:
        try:
            status, _ = http_get(port, path, timeout=1.0)
            if status == 200:
                return time.perf_counter()
        except (OSError, http.client.HTTPException):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before answering")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"no 200 from {path} within {timeout} s")
        time.sleep(interval)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    """``cmd`` prefixed with ``taskset -c cpu`` when taskset exists and that CPU is usable."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if cpu is None or not have("taskset") or cpu not in usable or len(usable) < 2:
        return list(cmd)
    return ["taskset", "-c", str(cpu), *cmd]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("nan")


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        return "  ".join(parts).rstrip()

    print()
    print(title)
    print("=" * len(title))
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    print()


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "executable": sys.executable,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks stop the servers."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def arg_parser(description: str) -> argparse.ArgumentParser:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    return parser


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
