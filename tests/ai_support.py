"""Building AI services for tests: configuration pointing at the fake server, a fake clock.

Also the fixtures the AI test modules share; they load this module with
``pytest_plugins = ["tests.ai_support"]``. They import it first, so pytest could not rewrite
its asserts (it has none) and would warn: PYTEST_DONT_REWRITE says there is nothing to rewrite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from chatterfix.config import Config
from chatterfix.services.ai.keys import KeyStore
from chatterfix.services.ai.service import AIService, Policy
from tests.ai_servers import FakeAI, serve_fake_ai

MakeAI = Callable[..., AIService]

KEYS = {
    "OPENAI_API_KEY": "sk-test-openai",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "XAI_API_KEY": "xai-test",
}


@attrs.define
class FakeTime:
    """A clock that only moves when the code under test sleeps: no test really waits."""

    now: float = 1000.0
    sleeps: list[float] = attrs.Factory(list)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def ai_config(url: str, tmp_path: Path, **ai: Any) -> Config:
    providers = {
        "openai": {"base_url": f"{url}/v1"},
        "anthropic": {"base_url": f"{url}/v1"},
        "xai": {"base_url": f"{url}/xai/v1"},
    }
    for name, settings in (ai.pop("providers", None) or {}).items():
        providers.setdefault(name, {}).update(settings)
    return Config({"ai": {"providers": providers, **ai}}, environ={}, cwd=tmp_path)


def make_service(
    url: str,
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    time: FakeTime | None = None,
    attempts: int = 3,
    timeout: float = 5.0,
    events: Any = None,
    **ai: Any,
) -> AIService:
    time = time or FakeTime()
    return AIService(
        ai_config(url, tmp_path, **ai),
        keys=KeyStore(tmp_path / "ai-keys.json", environ=dict(KEYS if env is None else env)),
        policy=Policy(
            attempts=attempts,
            backoff=0.5,
            max_backoff=8.0,
            max_retry_after=30.0,
            timeout=timeout,
            sleep=time.sleep,
            clock=time.clock,
            random=lambda: 0.5,
        ),
        events=events,
    )


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeAI]:
    """One fake server per test module: starting uvicorn for every test would be slow."""
    with serve_fake_ai() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeAI) -> FakeAI:
    """The module's fake server, with no requests or scripted answers left by other tests."""
    fake_server.reset()
    return fake_server


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def make_ai(fake: FakeAI, tmp_path: Path, time: FakeTime) -> AsyncIterator[MakeAI]:
    """``make_service(**options)`` against the fake server on the test's clock; every
    service made is closed when the test ends, passed or failed."""
    made: list[AIService] = []

    def make(**options: Any) -> AIService:
        service = make_service(fake.url, tmp_path, **{"time": time, **options})
        made.append(service)
        return service

    yield make
    for service in made:
        await service.aclose()


@pytest.fixture
def ai(make_ai: MakeAI) -> AIService:
    """A service with the default test settings."""
    return make_ai()
