"""``/platform/ai/*`` over the gateway, and the ``chatterfix keys`` command."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import chatterfix

pytestmark = pytest.mark.anyio


def platform() -> chatterfix.Platform:
    return chatterfix.Platform(builtins=False, load_entrypoints=False)


async def test_generate(serve: Callable[..., Any]) -> None:
    async with serve(platform()) as client:
        response = await client.post(
            "/platform/ai/generate", json={"prompt": "P-101 leaking oil in building 3"}
        )
        assert response.status_code == 200
        body = response.json()
        assert body["provider"] == "local" and body["model"] == "rules"
        assert "Work order: Repair pump P-101: oil leak (Building 3)" in body["text"]
        assert set(body) == {"text", "provider", "model", "usage", "finish_reason", "latency_ms"}
        messages = [{"role": "user", "content": "AHU-3 grinding"}]
        response = await client.post(
            "/platform/ai/generate", json={"messages": messages, "system": "be brief"}
        )
        assert response.status_code == 200 and "AHU-3" in response.json()["text"]


async def test_generate_needs_ai_use(serve: Callable[..., Any]) -> None:
    p = platform()
    async with serve(p, admin=False) as client:
        response = await client.post("/platform/ai/generate", json={"prompt": "x"})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "authentication_required"
        assert p.permissions["ai.use"].plugin == "platform"
        await p.auth.create_role("viewer", ["work_order.read"])
        await p.auth.create_role("technician", ["ai.use"])
        viewer = await p.auth.create_user(username="viewer", roles=["viewer"])
        tech = await p.auth.create_user(username="tech", roles=["technician"])
        for user, status in ((viewer, 403), (tech, 200)):
            token = (await p.auth.create_token(user.id)).token
            response = await client.post(
                "/platform/ai/generate",
                json={"prompt": "pump noise"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == status, response.text


async def test_generate_stream(serve: Callable[..., Any]) -> None:
    async with serve(platform()) as client:
        response = await client.post(
            "/platform/ai/generate/stream", json={"prompt": "AHU-3 grinding noise"}
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            (
                block.split("\n")[0].removeprefix("event: "),
                json.loads(block.split("\n")[1].removeprefix("data: ")),
            )
            for block in response.text.strip().split("\n\n")
        ]
        kinds = [kind for kind, _ in events]
        assert set(kinds[:-1]) == {"chunk"} and kinds[-1] == "done"
        text = "".join(data["text"] for kind, data in events if kind == "chunk")
        assert text.startswith("Priority: high (urgent)\nAssets: AHU-3")
        assert events[-1][1]["finish_reason"] == "stop"


async def test_errors_are_json_and_never_hold_a_key(
    serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with serve(platform()) as client:
        response = await client.post(
            "/platform/ai/generate", json={"prompt": "x", "provider": "openai"}
        )
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "ai_key_missing" and "OPENAI_API_KEY" in error["message"]
        assert error["provider"] == "openai"
        response = await client.post(
            "/platform/ai/generate/stream", json={"prompt": "x", "provider": "nope"}
        )
        assert response.status_code == 422
        assert "unknown AI provider 'nope'" in response.json()["error"]["message"]
        for body, message in (
            ({"prompt": "x", "colour": "red"}, "unknown field(s) colour"),
            ({}, "give 'prompt' or 'messages'"),
            ({"prompt": 3}, "field 'prompt' must be str"),
            ({"prompt": "x", "json_mode": "yes"}, "field 'json_mode' must be bool"),
            ({"messages": [{"role": "robot", "content": "x"}]}, "each message must be"),
        ):
            response = await client.post("/platform/ai/generate", json=body)
            assert response.status_code == 422
            assert message in response.json()["error"]["message"]


async def test_providers_analyze_and_voice(serve: Callable[..., Any]) -> None:
    async with serve(platform()) as client:
        response = await client.get("/platform/ai/providers")
        assert response.status_code == 200
        rows = {row["name"]: row for row in response.json()["providers"]}
        assert response.json()["default"] == "local"
        assert set(rows) >= {"local", "openai", "anthropic", "xai"}
        assert rows["openai"]["key_env"] == "OPENAI_API_KEY"
        assert rows["local"]["needs_key"] is False
        response = await client.post(
            "/platform/ai/analyze",
            json={
                "image_description": "oil leak and heavy vibration",
                "asset": {"name": "P-7", "asset_type": "pump", "install_date": "2000-01-01"},
            },
        )
        assert response.status_code == 200
        findings = response.json()
        assert findings["condition"] in ("poor", "critical") and findings["asset_tags"] == ["P-7"]
        response = await client.post(
            "/platform/ai/voice",
            json={"voice_text": "the pump in building 3 is leaking oil badly, fix it today"},
        )
        assert response.status_code == 200
        assert response.json()["work_order"]["priority"] == "high"
        response = await client.post(
            "/platform/ai/analyze", json={"image": base64.b64encode(b"jpeg").decode()}
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "ai_capability_missing"
        response = await client.post("/platform/ai/voice", json={"audio": "%%%"})
        assert response.status_code == 422


def test_keys_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chatterfix.cli import cli

    monkeypatch.setenv("CHATTERFIX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XAI_API_KEY", "xai-from-env-123456")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    key = "sk-cli-secret-0123456789"
    result = runner.invoke(cli, ["keys", "set", "openai", "--stdin"], input=key + "\n")
    assert result.exit_code == 0, result.output
    assert key not in result.output
    path = tmp_path / "data" / "ai-keys.json"
    assert json.loads(path.read_text()) == {"openai": key}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    result = runner.invoke(cli, ["keys", "list"])
    assert result.exit_code == 0, result.output
    assert "openai" in result.output and "set (keys file)" in result.output
    assert "set ($XAI_API_KEY)" in result.output
    assert "not set ($ANTHROPIC_API_KEY)" in result.output
    assert key not in result.output and "xai-from-env" not in result.output
    listed = json.loads(runner.invoke(cli, ["keys", "list", "--json"]).output)
    assert {"provider": "openai", "env": "OPENAI_API_KEY", "source": "file"} in listed["providers"]
    assert runner.invoke(cli, ["keys", "remove", "openai"]).exit_code == 0
    assert json.loads(path.read_text()) == {}
    result = runner.invoke(cli, ["keys", "remove", "openai"])
    assert result.exit_code == 1 and "no key for 'openai'" in result.output
