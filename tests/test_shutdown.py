"""Graceful shutdown of `chatterfix start` on SIGTERM, with a real server process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from tests.helpers import started_gateway

pytestmark = pytest.mark.slow

SLOW_PLUGIN = """
import anyio
from pathlib import Path
from starlette.responses import JSONResponse
from starlette.routing import Route
import chatterfix

async def slow(request):
    Path(request.query_params["marker"]).write_text("started")
    await anyio.sleep(float(request.query_params["seconds"]))
    return JSONResponse({"done": True})

@chatterfix.hookimpl
def register_routes(platform):
    return [Route("/api/slow/wait", slow)]

@chatterfix.hookimpl
def shutdown(platform):
    Path(platform.config.get("slow.shutdown_marker")).write_text("stopped")
"""


def start_gateway(
    tmp_path: Path, grace: float
) -> AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]:
    apps = tmp_path / "apps" / "slow"
    apps.mkdir(parents=True)
    (apps / "plugin.json").write_text('{"name": "slow", "version": "1.0.0"}')
    (apps / "main.py").write_text(SLOW_PLUGIN)
    env = {
        "CHATTERFIX_GATEWAY__SHUTDOWN_GRACE": str(grace),
        "CHATTERFIX_SLOW__SHUTDOWN_MARKER": str(tmp_path / "shutdown"),
    }
    return started_gateway(
        sys.executable, "--plugins-dir", str(tmp_path / "apps"), cwd=tmp_path, env=env
    )


def request_in_background(url: str, marker: Path, seconds: float) -> dict[str, object]:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            response = httpx.get(
                url + "/api/slow/wait",
                params={"marker": str(marker), "seconds": seconds},
                timeout=30,
            )
            outcome["status"] = response.status_code
            outcome["body"] = response.json()  # JSON, whatever the outcome
        except httpx.HTTPError as exc:
            outcome["error"] = type(exc).__name__

    thread = threading.Thread(target=run)
    thread.start()
    outcome["thread"] = thread
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "the slow request never started"
        time.sleep(0.01)
    return outcome


def test_sigterm_finishes_requests_in_flight_then_exits_0(tmp_path: Path) -> None:
    with start_gateway(tmp_path, grace=10) as (url, process):
        outcome = request_in_background(url, tmp_path / "started", seconds=1.5)
        os.killpg(process.pid, signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(url + "/health", timeout=2)
        assert process.wait(timeout=20) == 0
        outcome["thread"].join(timeout=10)  # type: ignore[attr-defined]
        assert outcome.get("status") == 200, outcome
        assert outcome["body"] == {"done": True}
        assert (tmp_path / "shutdown").read_text() == "stopped"


def test_requests_outlasting_the_grace_period_are_cut_and_the_exit_is_still_clean(
    tmp_path: Path,
) -> None:
    with start_gateway(tmp_path, grace=0.5) as (url, process):
        outcome = request_in_background(url, tmp_path / "started", seconds=60)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        outcome["thread"].join(timeout=10)  # type: ignore[attr-defined]
        assert outcome.get("status") == 503, outcome
        assert outcome["body"]["error"]["code"] == "shutting_down"  # type: ignore[index]
        assert (tmp_path / "shutdown").read_text() == "stopped"
