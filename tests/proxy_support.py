"""Real processes for the discovery and proxy tests: upstream services (``upstream_app.py``
under uvicorn) and a gateway served by uvicorn on a loopback port."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.helpers import free_port

UPSTREAM_APP = Path(__file__).with_name("upstream_app.py")


class Upstream:
    """One upstream process; ``kill()`` is SIGKILL, ``start()`` (re)starts it on its port."""

    def __init__(self, instance: str, log_dir: Path, port: int | None = None) -> None:
        self.instance = instance
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"upstream-{instance}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Upstream:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(UPSTREAM_APP), str(self.port), self.instance],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"upstream {self.instance} exited:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"upstream {self.instance} did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def upstreams(log_dir: Path, *instances: str) -> Iterator[list[Upstream]]:
    started: list[Upstream] = []
    try:
        for instance in instances:
            started.append(Upstream(instance, log_dir).start())
        yield started
    finally:
        for upstream in started:
            upstream.stop()


@contextlib.asynccontextmanager
async def served(platform: Any) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Serve ``platform`` with uvicorn on a free loopback port (in this event loop); yield
    its URL and an administrator's Authorization header."""
    import uvicorn

    class Server(uvicorn.Server):  # type: ignore[misc]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # leave the test runner's alone
            yield

    port = free_port()
    server = Server(
        uvicorn.Config(
            platform.asgi_app,
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,
        )
    )
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        with anyio.fail_after(30):
            while not server.started:
                if server.should_exit:
                    pytest.fail("the gateway did not start")
                await anyio.sleep(0.01)
        user = await platform.auth.create_user(
            username=f"admin-{secrets.token_hex(4)}", roles=["admin"]
        )
        issued = await platform.auth.create_token(user.id, "tests")
        try:
            yield f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {issued.token}"}
        finally:
            server.should_exit = True


async def eventually(
    condition: Callable[[], Any], what: str, within: float = 20, interval: float = 0.02
) -> Any:
    """Poll ``condition`` (sync or async) until it is truthy; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within} s")
        await anyio.sleep(interval)


def fast_discovery(**overrides: Any) -> dict[str, Any]:
    """Discovery settings for tests: quick checks, short ejections."""
    settings: dict[str, Any] = {
        "health_interval": 0.2,
        "health_timeout": 1.0,
        "health_retries": 0,
        "health_backoff": 0.05,
        "health_max_interval": 0.5,
        "ejection_time": 0.2,
        "sync_interval": 0.1,
    }
    settings.update(overrides)
    return {"discovery": settings}
