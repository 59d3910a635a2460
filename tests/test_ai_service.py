"""The AI service: fallbacks, keys, records, events, structured output, provider plugins."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import chatterfix
from chatterfix.events.bus import EventBus
from chatterfix.services.ai.errors import AIError, AllProvidersFailed, MissingKeyError
from chatterfix.services.ai.keys import KeyStore, Secret
from chatterfix.services.ai.service import AIService
from chatterfix.services.ai.types import CompletionRequest, CompletionResult, Usage, to_dict
from tests.ai_servers import FakeAI, Scripted
from tests.ai_support import FakeTime, MakeAI, make_service

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.ai_support"]  # fake, time, make_ai and ai


async def test_failing_provider_falls_back_to_local(
    fake: FakeAI, make_ai: MakeAI, time: FakeTime
) -> None:
    events = EventBus()
    ai = make_ai(fallbacks=["local"], events=events)
    fake.queue("/v1/chat/completions", *[Scripted(500, json={"error": "down"})] * 3)
    text = await ai.generate_text(
        "the pump in building 3 is leaking oil badly, needs fixing today", provider="openai"
    )
    assert text.result.provider == "local"
    assert "Work order: Repair pump: oil leak (Building 3)" in text
    assert [(r.provider, r.ok) for r in ai.records] == [("openai", False)] * 3 + [("local", True)]
    assert {r.call_id for r in ai.records} == {1}
    assert len(time.sleeps) == 2
    [event] = events.history
    assert event.type == chatterfix.SystemEvents.AI_ANALYSIS_COMPLETED
    assert event.source == "ai"
    assert event.data["provider"] == "local" and event.data["fallback"] is True


async def test_missing_key_names_the_variable_and_falls_back(fake: FakeAI, make_ai: MakeAI) -> None:
    ai = make_ai(env={})
    with pytest.raises(MissingKeyError) as caught:
        await ai.generate_text("x", provider="anthropic")
    assert "ANTHROPIC_API_KEY" in str(caught.value)
    assert "chatterfix keys set anthropic" in str(caught.value)
    assert fake.requests == []
    ai = make_ai(env={}, fallbacks=["local"])
    assert (await ai.generate_text("P-101 vibration", provider="openai")).result.provider == "local"


async def test_every_provider_failing_lists_them_all(make_ai: MakeAI) -> None:
    events = EventBus()
    ai = make_ai(env={}, fallbacks=["anthropic", "xai"], events=events)
    with pytest.raises(AllProvidersFailed) as caught:
        await ai.generate_text("x", provider="openai")
    assert [e.provider for e in caught.value.errors] == ["openai", "anthropic", "xai"]
    assert all(e.kind == "missing_key" for e in caught.value.errors)
    [event] = events.history
    assert event.type == chatterfix.SystemEvents.AI_ANALYSIS_FAILED
    assert event.data["error_kind"] == "missing_key"


async def test_key_order_explicit_then_file_then_environment(
    fake: FakeAI, make_ai: MakeAI, tmp_path: Path
) -> None:
    ai = make_ai(env={"OPENAI_API_KEY": "sk-from-env"})
    await ai.generate_text("x", provider="openai")
    KeyStore(tmp_path / "ai-keys.json").set("openai", "sk-from-file")
    await ai.generate_text("x", provider="openai")
    await ai.generate_text("x", provider="openai", api_key="sk-explicit")
    assert [r.headers["authorization"] for r in fake.requests] == [
        "Bearer sk-from-env",
        "Bearer sk-from-file",
        "Bearer sk-explicit",
    ]
    assert stat.S_IMODE(os.stat(tmp_path / "ai-keys.json").st_mode) == 0o600


async def test_keys_never_appear_in_logs_errors_records_or_events(
    fake: FakeAI, make_ai: MakeAI, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk-proj-Zq81xVv0AbCdEfGh4567IjKl"
    events = EventBus()
    ai = make_ai(env={"OPENAI_API_KEY": key}, attempts=1, events=events)
    fake.queue(
        "/v1/chat/completions",
        Scripted(
            401,
            json={"error": {"message": "Incorrect API key provided: sk-proj-Zq81********IjKl."}},
        ),
        Scripted(500, body=f"upstream rejected Authorization: Bearer {key}".encode()),
        Scripted(500, json={"error": {"message": f"bad key {key[:14]}..."}}),
    )
    caplog.set_level(logging.DEBUG)
    messages = []
    for _ in range(3):
        try:
            await ai.generate_text("x", provider="openai")
        except AIError as exc:
            messages.append(f"{exc} {exc!r}")
    assert len(messages) == 3
    assert fake.requests[0].headers["authorization"] == f"Bearer {key}"  # it was sent...
    everything = "\n".join(
        [
            *messages,
            caplog.text,
            *(f"{r.getMessage()} {r.args}" for r in caplog.records),
            json.dumps([to_dict(r) for r in ai.records]),
            json.dumps([e.data for e in events.history]),
            repr(ai.provider("openai")),
            repr(ai.keys.resolve("openai", "OPENAI_API_KEY")),
            str(ai.describe_providers()),
        ]
    )
    for fragment in (key, key[:14], "Zq81xVv0AbCd", "AbCdEfGh4567"):  # ...and never shown
        assert fragment not in everything
    assert "********" in everything


def test_secret_hides_itself() -> None:
    secret = Secret("sk-very-secret-value")
    assert "sk-very" not in repr(secret) and "sk-very" not in str(secret)
    assert f"{secret}" == "Secret('********')"
    assert secret.reveal() == "sk-very-secret-value"


async def test_model_work_order_is_validated(fake: FakeAI, ai: AIService, caplog: Any) -> None:
    draft = {
        "title": "Replace seal on P-101",
        "description": "Oil leaking at the shaft.",
        "priority": "HIGH",
        "asset_tags": "P-101",
        "asset_type": "pump",
        "location": "Building 3",
        "category": "mechanical",
        "observations": ["oil leak"],
        "action": "replace",
        "due_within_hours": 8,
        "confidence": 0.9,
    }

    def answer(content: str) -> Scripted:
        return Scripted(
            json={
                "model": "gpt-4o-mini",
                "choices": [
                    {"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
            }
        )

    fake.queue(
        "/v1/chat/completions",
        answer("Here is the draft: " + json.dumps(draft)),
        answer(json.dumps({**draft, "priority": "whenever"})),  # not a priority
        answer("I cannot help with that."),  # no JSON at all
    )
    sentence = "P-101 in building 3 is leaking oil at the shaft, replace the seal today"
    made = await ai.draft_work_order(sentence, provider="openai")
    assert (made.title, made.priority, made.asset_tags) == (
        "Replace seal on P-101",
        "high",
        ("P-101",),
    )
    body = fake.requests[0].json
    assert body["response_format"] == {"type": "json_object"}
    assert "work-order draft" in body["messages"][0]["content"]
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        fallback = await ai.draft_work_order(sentence, provider="openai")
        assert fallback.asset_tags == ("P-101",) and fallback.priority == "high"
        assert fallback.action == "replace" and fallback.location == "Building 3"
    assert caplog.text.count("the rule engine's answer is used") == 2


async def test_voice_result_says_who_drafted(ai: AIService) -> None:
    result = await ai.process_voice_to_text(voice_text="Create work order for pump maintenance")
    assert (result.provider, result.source) == ("local", "rules")
    assert result.work_order.asset_type == "pump" and result.work_order.action == "service"
    with pytest.raises(AIError, match="cannot do transcription"):
        await ai.process_voice_to_text(audio=b"wav")
    with pytest.raises(AIError, match="give audio or voice_text"):
        await ai.process_voice_to_text()


async def test_local_cannot_see_images_without_a_description(tmp_path: Path) -> None:
    ai = make_service("http://127.0.0.1:9", tmp_path)
    with pytest.raises(AIError, match="cannot see images"):
        await ai.analyze_image(image=b"jpeg")
    findings = await ai.analyze_image(image=b"jpeg", image_description="rust on the base, P-3")
    assert findings.provider == "local" and "corrosion observed" in findings.findings


async def test_embeddings_never_fall_back(make_ai: MakeAI) -> None:
    ai = make_ai(env={}, fallbacks=["local"])
    with pytest.raises(MissingKeyError):
        await ai.embed(["x"], provider="openai")
    assert len((await ai.embed("x"))[0]) == 256


class Echo:
    """A provider plugin: a name and ``complete``; nothing else is required."""

    name = "echo"

    async def complete(self, request: CompletionRequest, key: Any) -> CompletionResult:
        return CompletionResult(
            text=request.prompt.upper(),
            provider="echo",
            model=request.model or "echo-1",
            usage=Usage(1, 1),
        )


class LoudOpenAI(Echo):
    name = "openai"
    needs_key = False


class EchoPlugin:
    @chatterfix.hookimpl
    def register_ai_providers(self, platform: chatterfix.Platform) -> list[Any]:
        return [Echo(), LoudOpenAI()]


async def test_provider_plugins_join_and_replace_builtins() -> None:
    platform = chatterfix.Platform(plugins=[EchoPlugin()], builtins=False, load_entrypoints=False)
    async with platform:
        ai = platform.ai
        assert await ai.generate_text("hi", provider="echo") == "HI"
        assert await ai.generate_text("hi", model="echo/custom") == "HI"
        assert (await ai.generate_text("hi", provider="openai")).result.provider == "echo"
        rows = {row["name"]: row for row in ai.describe_providers()}
        assert rows["echo"]["origin"] == "plugin" and rows["echo"]["capabilities"] == ["chat"]
        assert rows["local"]["origin"] == "builtin" and rows["local"]["default"] is True
        with pytest.raises(AIError, match="cannot do stream"):
            async for _ in ai.stream_text("hi", provider="echo", fallbacks=False):
                pass
        await platform.plugins.stop_plugin(next(iter(platform.plugins.records)))
        assert "echo" not in ai.providers


async def test_platform_service_without_builtins_has_local_and_closes_clients(
    fake: FakeAI,
) -> None:
    platform = chatterfix.Platform(
        {"ai": {"providers": {"openai": {"base_url": f"{fake.url}/v1"}}}},
        builtins=False,
        load_entrypoints=False,
    )
    async with platform:
        assert chatterfix.shared_services.ai is platform.ai
        analysis = await chatterfix.shared_services.ai.generate_text(
            "Analyze this maintenance issue"
        )
        assert analysis.result.provider == "local"
        await platform.ai.generate_text("x", provider="openai", api_key="sk-1")
        client = platform.ai.provider("openai").client
        assert [e.type for e in platform.events.history][-2:] == ["ai.analysis.completed"] * 2
    assert client.is_closed


async def test_config_change_rebuilds_the_builtin_providers(fake: FakeAI, ai: AIService) -> None:
    await ai.generate_text("x", provider="openai")
    ai.config.set("ai.providers.openai.model", "gpt-4.1")
    await ai.generate_text("x", provider="openai")
    assert [r.json["model"] for r in fake.requests] == ["gpt-4o-mini", "gpt-4.1"]
