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
import re
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


def chatterfix_start(port: int, *options: str) -> list[str]:
    """``chatterfix start --host 127.0.0.1 --port <port>`` and ``options``."""
    return [str(venv_bin("chatterfix")), "start", "--host", HOST, "--port", str(port), *options]


def uvicorn_command(port: int, *options: str) -> list[str]:
    """``python -m uvicorn --host 127.0.0.1 --port <port>`` and ``options``."""
    return [sys.executable, "-m", "uvicorn", "--host", HOST, "--port", str(port), *options]


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


def require_tools(*tools: str) -> None:
    """Exit with the install command when one of ``tools`` is missing."""
    for tool in tools:
        if not have(tool):
            sys.exit(f"{tool} is not installed (apt-get install -y {tool})")


def require_chatterfix() -> None:
    if not venv_bin("chatterfix").exists():
        sys.exit(f"no chatterfix console script next to {sys.executable}")


def create_api_token(root: Path, data: Path) -> str:
    """``chatterfix users create bench --role admin`` and ``users token bench`` in ``root``
    with ``CHATTERFIX_DATA_DIR=data``; the API token."""
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
    return token


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (0.0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children, recursively (nginx's worker, say)."""
    found = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        found.extend(process_tree(int(child)))
    return found


WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk_seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"cannot read wrk duration {text!r}")
    return float(match.group(1)) * WRK_UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """req/s, request count, p50/p75/p90/p99 (s), socket errors and non-2xx of ``wrk --latency``."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if not rps or not total:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    result: dict[str, Any] = {"rps": float(rps.group(1)), "requests": int(total.group(1))}
    for pct in ("50", "75", "90", "99"):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", output, re.M)
        result[f"p{pct}_s"] = _wrk_seconds(found.group(1)) if found else None
    errors = re.search(r"Socket errors: (.*)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["socket_errors"] = errors.group(1) if errors else ""
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return result


def add_wrk_options(parser: argparse.ArgumentParser) -> None:
    """``--duration``, ``--connections`` and ``--rounds`` of the wrk benchmarks."""
    parser.add_argument("--duration", default="10s", help="wrk -d (default 10s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server (default 3)")


def run_wrk(
    port: int,
    path: str,
    duration: str,
    connections: int,
    cpu: int | None,
    headers: Sequence[str] = (),
) -> dict[str, Any]:
    """``wrk -t1 -c<connections> -d<duration> --latency [-H header ...]`` on ``path``, pinned
    to ``cpu``; its figures (:func:`parse_wrk`)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    proc = subprocess.run(
        pinned([*cmd, f"http://{HOST}:{port}{path}"], cpu),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return parse_wrk(proc.stdout)


def run_wrk_with_cpu(
    port: int,
    path: str,
    duration: str,
    connections: int,
    cpu: int | None,
    pids: Sequence[int],
    headers: Sequence[str] = (),
) -> dict[str, Any]:
    """A 2 s warm-up run of wrk (discarded), then the measured run, with the CPU time the
    server processes ``pids`` used during it: ``server_cpu_s`` and ``cpu_us_per_request``
    (None when no CPU time could be read)."""
    run_wrk(port, path, "2s", connections, cpu, headers)  # warm-up, discarded
    cpu_before = sum(process_cpu_s(pid) for pid in pids)
    result = run_wrk(port, path, duration, connections, cpu, headers)
    cpu_s = sum(process_cpu_s(pid) for pid in pids) - cpu_before
    result["server_cpu_s"] = cpu_s
    result["cpu_us_per_request"] = cpu_s / result["requests"] * 1e6 if cpu_s else None
    return result


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


def fmt_us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def round_line(number: int, name: str, result: dict[str, Any], width: int) -> str:
    """The progress line of one wrk run: req/s, p50, p99, server CPU and non-2xx."""
    return (
        f"round {number} {name:<{width}} {result['rps']:>8.0f} req/s  "
        f"p50 {result['p50_s'] * 1000:.2f} ms  p99 {result['p99_s'] * 1000:.2f} ms  "
        f"server CPU {fmt_us(result['cpu_us_per_request'])} us/request  "
        f"non-2xx {result['non_2xx']}"
    )


def cpu_ratio(value: dict[str, Any], base: dict[str, Any]) -> float:
    """Server CPU per request of ``base`` over that of ``value`` (like req/s: higher is better)."""
    if not value["cpu_us_per_request"] or not base["cpu_us_per_request"]:
        return float("nan")
    return float(base["cpu_us_per_request"] / value["cpu_us_per_request"])


COMPARISON_HEADERS = [
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
]


def comparison_row(label: str, value: dict[str, Any], base: dict[str, Any]) -> list[object]:
    """A row under :data:`COMPARISON_HEADERS`: wrk run ``value`` against baseline ``base``."""
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
        fmt_us(base["cpu_us_per_request"]),
        f"{ratio(value['rps'], base['rps']):.2f}",
        f"{cpu_ratio(value, base):.2f}",
        errors,
    ]


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
