"""Helpers shared by the tests that start real gateway processes."""

from __future__ import annotations

import contextlib
import os
import signal
import site
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def gateway_log(cwd: Path, url: str) -> Path:
    """The file holding the output of the gateway :func:`gateway` started at ``url``."""
    return cwd / f"gateway-{url.rsplit(':', 1)[1]}.log"


@contextlib.contextmanager
def started_gateway(
    python: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `python -m chatterfix start` on a free port until /health answers; yield its URL
    and process, and stop it (SIGTERM, then SIGKILL) unless the test already did.

    Its standard output and error go to :func:`gateway_log`."""
    port = free_port()
    log = gateway_log(cwd, f"http://127.0.0.1:{port}")
    with log.open("wb") as output:
        process = subprocess.Popen(
            [python, "-m", "chatterfix", "start", "--port", str(port), *args],
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"gateway exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gateway did not answer within 60 s:\n{log.read_text()}")
            time.sleep(0.05)
        yield url, process
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's group, SIGKILL it after 15 s; nothing if it has exited."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def gateway(python: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """:func:`started_gateway`, yielding its URL only."""
    with started_gateway(python, *args, cwd=cwd, env=env) as (url, _process):
        yield url


def admin_headers(cwd: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The administrator's token a gateway started by :func:`gateway` saved on first start."""
    data_dir = (env or {}).get("CHATTERFIX_DATA_DIR") or os.environ.get("CHATTERFIX_DATA_DIR")
    folder = Path(data_dir) if data_dir else cwd / ".chatterfix"
    token = (folder / "cli-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def require_service(port: int, name: str) -> None:
    """Skip when a loopback service is down, except in CI, where that is a failure."""
    with socket.socket() as sock:
        sock.settimeout(1)
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            return
    message = f"{name} is not reachable on 127.0.0.1:{port}"
    if os.environ.get("CI") == "true" or os.environ.get("CHATTERFIX_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def venv_seeing_project(root: Path) -> Path:
    """A new virtual environment in ``root`` that sees this project and its dependencies
    through a site directory, so that packages pip-installed into it land there alone;
    returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages())
    Path(purelib, "_chatterfix_project.pth").write_text(lines)
    return python
