"""Each HTTP provider against a loopback server speaking its wire protocol: the exact
requests sent, the parsing of real-shaped answers, errors, retries and streaming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatterfix.services.ai.errors import AIError, ProviderError
from chatterfix.services.ai.providers.base import retry_after_seconds
from chatterfix.services.ai.service import AIService
from chatterfix.services.ai.types import StreamChunk
from tests.ai_servers import FakeAI, Scripted, anthropic_stream
from tests.ai_support import FakeTime, MakeAI, make_service

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.ai_support"]  # fake, time, make_ai and ai


# -- OpenAI-compatible --------------------------------------------------------------------


async def test_openai_chat_request_and_answer(fake: FakeAI, ai: AIService) -> None:
    text = await ai.generate_text(
        "Why does P-101 vibrate?",
        provider="openai",
        system="You are a maintenance planner.",
        temperature=0.2,
        max_tokens=50,
        stop="END",
        json_mode=True,
    )
    assert text == "echo: Why does P-101 vibrate?"
    assert text.result.provider == "openai"
    assert text.result.model == "gpt-4o-mini-2024-07-18"
    assert (text.result.usage.input_tokens, text.result.usage.output_tokens) == (11, 7)
    assert text.result.finish_reason == "stop"
    [seen] = fake.requests
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["authorization"] == "Bearer sk-test-openai"
    assert seen.headers["content-type"] == "application/json"
    assert seen.json == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a maintenance planner."},
            {"role": "user", "content": "Why does P-101 vibrate?"},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
        "stop": ["END"],
        "response_format": {"type": "json_object"},
    }


async def test_openai_model_id_is_split_at_the_first_slash(fake: FakeAI, ai: AIService) -> None:
    await ai.generate_text("hi", model="openai/meta-llama/Llama-3-8b")
    assert fake.requests[0].json["model"] == "meta-llama/Llama-3-8b"
    await ai.generate_text("hi", provider="openai", model="gpt-4o")
    assert fake.requests[1].json["model"] == "gpt-4o"
    with pytest.raises(AIError, match="unknown AI provider 'nope'; known providers: anthropic"):
        await ai.generate_text("hi", model="nope/x")


async def test_openai_streaming(fake: FakeAI, ai: AIService) -> None:
    chunks = [c async for c in ai.stream_text("pump P-7 leaking", provider="openai")]
    assert "".join(c.text for c in chunks) == "echo: pump P-7 leaking"
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None and last.usage.output_tokens == 7
    assert all(c.finish_reason is None for c in chunks[:-1])
    body = fake.requests[0].json
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    record = ai.records[-1]
    assert (record.operation, record.ok, record.output_tokens) == ("stream_text", True, 7)


def delta(text: str, finish: str | None) -> str:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return f"data: {json.dumps({'choices': [choice]})}\n\n"


async def test_openai_stream_without_usage_and_with_error_event(
    fake: FakeAI, make_ai: MakeAI
) -> None:
    ai = make_ai(attempts=1)
    fake.queue(
        "/v1/chat/completions",
        Scripted(
            sse=[
                delta("Hel", None),
                delta("lo", "length"),
                "data: [DONE]\n\n",
            ]
        ),
        Scripted(
            sse=[
                delta("part", None),
                'data: {"error":{"message":"model overloaded","type":"server_error"}}\n\n',
            ]
        ),
    )
    chunks = [c async for c in ai.stream_text("x", provider="openai")]
    assert "".join(c.text for c in chunks) == "Hello"
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage is None
    received: list[StreamChunk] = []
    with pytest.raises(ProviderError, match="model overloaded"):
        async for chunk in ai.stream_text("x", provider="openai"):
            received.append(chunk)
    assert [c.text for c in received] == ["part"]  # what came before the error was delivered
    assert ai.records[-1].ok is False


async def test_openai_embeddings(fake: FakeAI, ai: AIService) -> None:
    vectors = await ai.embed(["pump", "air handler"], provider="openai")
    assert vectors == [[4.0, 0.0, 0.5], [11.0, 1.0, 0.5]]  # by "index", not by position
    seen = fake.requests[0]
    assert seen.path == "/v1/embeddings"
    assert seen.json == {"model": "text-embedding-3-small", "input": ["pump", "air handler"]}


async def test_openai_transcription_then_work_order(fake: FakeAI, ai: AIService) -> None:
    audio = b"RIFF\x00\x00WAVEfmt fake-audio-bytes"
    result = await ai.process_voice_to_text(audio=audio, provider="openai")
    assert result.transcript == "the pump in building 3 is leaking oil badly"
    transcription = fake.seen("/v1/audio/transcriptions")[0]
    assert transcription.headers["authorization"] == "Bearer sk-test-openai"
    assert transcription.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="model"\r\n\r\nwhisper-1' in transcription.body
    assert b'name="file"; filename="audio.wav"' in transcription.body
    assert audio in transcription.body
    # The draft came from the chat model; its echo is no JSON, so the rule engine drafted.
    assert result.source == "rules"
    assert result.work_order.priority == "high"
    assert result.work_order.location == "Building 3"


async def test_openai_image_input(fake: FakeAI, ai: AIService) -> None:
    findings = json.dumps(
        {
            "condition_score": 4,
            "condition": "Poor",
            "priority": "High",
            "findings": ["oil film on the casing", "corroded base plate"],
            "recommendations": ["Replace the mechanical seal"],
            "asset_tags": ["P-101"],
            "confidence": 0.8,
            "remarks": "an extra field the model added",
        }
    )
    fake.queue(
        "/v1/chat/completions",
        Scripted(
            json={
                "model": "gpt-4o",
                "choices": [
                    {
                        "message": {"role": "assistant", "content": f"```json\n{findings}\n```"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 900, "completion_tokens": 80},
            }
        ),
    )
    result = await ai.analyze_image(
        image=b"\x89PNG fake",
        image_description="pump P-101",
        provider="openai",
        media_type="image/png",
    )
    assert (result.condition_score, result.condition, result.priority) == (4, "poor", "high")
    assert (result.source, result.provider, result.model) == ("model", "openai", "gpt-4o")
    body = fake.requests[0].json
    assert body["response_format"] == {"type": "json_object"}
    user = body["messages"][-1]["content"]
    assert user[0]["type"] == "text" and "pump P-101" in user[0]["text"]
    assert user[1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORyBmYWtl"},
    }
    assert ai.records[-1].input_tokens == 900


async def test_openai_compatible_server_without_key(fake: FakeAI, make_ai: MakeAI) -> None:
    ai = make_ai(
        env={},
        providers={
            "ollama": {
                "kind": "openai",
                "base_url": f"{fake.url}/ollama/v1",
                "model": "llama3.1",
                "needs_key": False,
            }
        },
    )
    text = await ai.generate_text("hello", provider="ollama")
    assert text.result.provider == "ollama"
    seen = fake.requests[0]
    assert seen.path == "/ollama/v1/chat/completions"
    assert "authorization" not in seen.headers
    assert seen.json["model"] == "llama3.1"


async def test_xai_is_openai_compatible(fake: FakeAI, ai: AIService) -> None:
    text = await ai.generate_text("hello", provider="xai")
    assert text == "echo: hello"
    seen = fake.requests[0]
    assert seen.path == "/xai/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer xai-test"
    assert seen.json["model"] == "grok-2-latest"


# -- errors and the retry policy ----------------------------------------------------------


async def test_401_is_not_retried(fake: FakeAI, ai: AIService, time: FakeTime) -> None:
    fake.queue(
        "/v1/chat/completions",
        Scripted(
            401,
            json={
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        ),
    )
    with pytest.raises(ProviderError) as caught:
        await ai.generate_text("x", provider="openai")
    assert caught.value.kind == "auth" and caught.value.status_code == 401
    assert "openai answered 401: Incorrect API key provided." in str(caught.value)
    assert "OPENAI_API_KEY" in str(caught.value)
    assert len(fake.requests) == 1 and time.sleeps == []


async def test_400_is_not_retried(fake: FakeAI, ai: AIService, time: FakeTime) -> None:
    fake.queue(
        "/v1/chat/completions",
        Scripted(
            400,
            json={
                "error": {
                    "message": "Invalid value for 'temperature'",
                    "type": "invalid_request_error",
                }
            },
        ),
    )
    with pytest.raises(ProviderError, match="temperature") as caught:
        await ai.generate_text("x", provider="openai", temperature=9)
    assert caught.value.kind == "bad_request"
    assert len(fake.requests) == 1 and time.sleeps == []


async def test_429_waits_for_retry_after(fake: FakeAI, ai: AIService, time: FakeTime) -> None:
    limited = {"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}}
    fake.queue(
        "/v1/chat/completions",
        Scripted(429, json=limited, headers={"Retry-After": "7"}),
        Scripted(429, json=limited, headers={"Retry-After": "2"}),
    )
    text = await ai.generate_text("x", provider="openai")
    assert text == "echo: x"
    assert time.sleeps == [7.0, 2.0]
    assert [r.error_kind for r in ai.records] == ["rate_limit", "rate_limit", None]
    assert [r.attempt for r in ai.records] == [1, 2, 3]


async def test_429_with_a_long_retry_after_gives_up(
    fake: FakeAI, ai: AIService, time: FakeTime
) -> None:
    fake.queue("/v1/chat/completions", Scripted(429, json={}, headers={"Retry-After": "3600"}))
    with pytest.raises(ProviderError) as caught:
        await ai.generate_text("x", provider="openai")
    assert caught.value.kind == "rate_limit" and caught.value.retry_after == 3600
    assert time.sleeps == []


async def test_5xx_backs_off_with_jitter_then_succeeds(
    fake: FakeAI, ai: AIService, time: FakeTime
) -> None:
    fake.queue(
        "/v1/chat/completions",
        Scripted(500, json={"error": {"message": "internal"}}),
        Scripted(503, body=b"<html>Service Unavailable</html>"),
    )
    assert await ai.generate_text("x", provider="openai") == "echo: x"
    # backoff 0.5 * 2**(n-1), jitter between half and all of it (random() == 0.5 here)
    assert time.sleeps == [0.375, 0.75]
    assert ai.records[1].error == "openai answered 503: <html>Service Unavailable</html>"
    # latency comes from the injected clock: the requests themselves took no fake time
    assert [r.latency_ms for r in ai.records] == [0.0, 0.0, 0.0]


async def test_5xx_gives_up_after_the_attempts(
    fake: FakeAI, make_ai: MakeAI, time: FakeTime
) -> None:
    ai = make_ai(attempts=3)
    fake.queue("/v1/chat/completions", *[Scripted(502, json={"error": "bad gateway"})] * 3)
    with pytest.raises(ProviderError, match="502") as caught:
        await ai.generate_text("x", provider="openai")
    assert caught.value.kind == "server"
    assert len(fake.requests) == 3 and len(time.sleeps) == 2


async def test_timeout_is_retried(fake: FakeAI, make_ai: MakeAI, time: FakeTime) -> None:
    ai = make_ai(timeout=0.2)
    fake.queue("/v1/chat/completions", Scripted(200, json={}, delay=2.0))
    assert await ai.generate_text("x", provider="openai") == "echo: x"
    assert ai.records[0].error_kind == "timeout"
    assert ai.records[0].error == "openai did not answer within 0.2 s"
    assert time.sleeps == [0.375]


async def test_connection_refused_is_a_connection_error(tmp_path: Path) -> None:
    from tests.helpers import free_port

    ai = make_service(f"http://127.0.0.1:{free_port()}", tmp_path, attempts=2)
    with pytest.raises(ProviderError, match="could not be reached") as caught:
        await ai.generate_text("x", provider="openai")
    assert caught.value.kind == "connection"
    assert len(ai.records) == 2
    await ai.aclose()


async def test_context_window_error_moves_to_the_larger_model(
    fake: FakeAI, make_ai: MakeAI, time: FakeTime
) -> None:
    ai = make_ai(providers={"openai": {"model": "gpt-4o-mini", "fallback_model": "gpt-4.1"}})
    fake.queue(
        "/v1/chat/completions",
        Scripted(
            400,
            json={
                "error": {
                    "message": "This model's maximum context length is 128000 tokens.",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            },
        ),
    )
    text = await ai.generate_text("a very long maintenance log", provider="openai")
    assert text.result.model == "gpt-4.1-2024-07-18"
    assert [r.json["model"] for r in fake.requests] == ["gpt-4o-mini", "gpt-4.1"]
    assert ai.records[0].error_kind == "context_window"
    assert time.sleeps == []


def test_retry_after_forms() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


# -- Anthropic -----------------------------------------------------------------------------


async def test_anthropic_messages_request_and_answer(fake: FakeAI, ai: AIService) -> None:
    text = await ai.generate_text(
        "Is AHU-3 safe to run?",
        provider="anthropic",
        system="Be brief.",
        temperature=0,
        stop=["\n\n"],
    )
    assert text == "echo: Is AHU-3 safe to run?"
    result = text.result
    assert (result.provider, result.model, result.finish_reason) == (
        "anthropic",
        "claude-3-5-sonnet-latest",
        "stop",
    )
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 6)
    [seen] = fake.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-ant-test"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert seen.json == {
        "model": "claude-3-5-sonnet-latest",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Is AHU-3 safe to run?"}],
        "system": "Be brief.",
        "temperature": 0,
        "stop_sequences": ["\n\n"],
    }


async def test_anthropic_streaming(fake: FakeAI, ai: AIService) -> None:
    chunks = [c async for c in ai.stream_text("boiler B-2 knocking", provider="anthropic")]
    assert "".join(c.text for c in chunks) == "echo: boiler B-2 knocking"
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None
    assert (last.usage.input_tokens, last.usage.output_tokens) == (12, 6)
    assert fake.requests[0].json["stream"] is True


async def test_anthropic_stream_max_tokens_and_error_event(fake: FakeAI, make_ai: MakeAI) -> None:
    ai = make_ai(attempts=1)
    error = (
        'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
        '"message": "Overloaded"}}\n\n'
    )
    fake.queue(
        "/v1/messages",
        Scripted(sse=anthropic_stream("claude-x", ["Short", " answer"], stop="max_tokens")),
        Scripted(sse=[*anthropic_stream("claude-x", ["partial"])[:4], error]),
    )
    chunks = [c async for c in ai.stream_text("x", provider="anthropic", max_tokens=2)]
    assert chunks[-1].finish_reason == "length" and chunks[-1].model == "claude-x"
    assert fake.requests[0].json["max_tokens"] == 2
    with pytest.raises(ProviderError, match="Overloaded"):
        async for _ in ai.stream_text("x", provider="anthropic"):
            pass


async def test_anthropic_overloaded_is_retried_and_json_mode_is_asked_in_words(
    fake: FakeAI, ai: AIService, time: FakeTime
) -> None:
    fake.queue(
        "/v1/messages",
        Scripted(
            529,
            json={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        ),
    )
    await ai.generate_text("x", provider="anthropic", json_mode=True)
    assert len(fake.requests) == 2 and time.sleeps == [0.375]
    assert fake.requests[1].json["system"] == "Answer with one JSON object and nothing else."
    assert ai.records[0].error == "anthropic answered 529: Overloaded"


async def test_anthropic_image_blocks(fake: FakeAI, ai: AIService) -> None:
    await ai.analyze_image(image=b"jpeg-bytes", image_description="motor M-4", provider="anthropic")
    content = fake.requests[0].json["messages"][0]["content"]
    assert content[0] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "anBlZy1ieXRlcw=="},
    }
    assert content[1]["type"] == "text" and "motor M-4" in content[1]["text"]


async def test_http_clients_are_created_once_and_closed(ai: AIService) -> None:
    await ai.generate_text("a", provider="openai")
    provider = ai.provider("openai")
    client = provider.client
    await ai.generate_text("b", provider="openai")
    assert provider.client is client
    await ai.aclose()
    assert client.is_closed
