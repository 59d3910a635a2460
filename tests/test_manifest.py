"""Manifests are strict: every problem names the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chatterfix.manifest import (
    AppType,
    ManifestError,
    load_manifest_file,
    manifest_to_dict,
    structure_manifest,
)

SEED_MANIFEST = {
    "name": "my_app",
    "version": "1.0.0",
    "description": "My awesome app",
    "author": "Developer Name",
    "app_type": "ai_service",
    "dependencies": [],
    "routes": ["/api/my_app/.*"],
    "permissions": ["ai.use"],
    "enabled": True,
    "auto_start": True,
    "port": 8100,
    "health_endpoint": "/health",
    "config_schema": {
        "ai_provider": {
            "type": "string",
            "default": "openai",
            "description": "AI provider to use",
        }
    },
    "created_at": "2024-10-05T12:00:00",
}


def test_the_seed_manifest_is_valid() -> None:
    manifest = structure_manifest(SEED_MANIFEST, "plugin.json")
    assert manifest.app_type is AppType.AI_SERVICE
    assert manifest.port == 8100
    assert manifest.created_at is not None and manifest.created_at.year == 2024
    assert manifest_to_dict(manifest)["created_at"] == "2024-10-05T12:00:00"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"colour": "red"}, "colour", "unknown field"),
        ({"port": "8100"}, "port", "expected an integer"),
        ({"port": 70000}, "port", "not a TCP port"),
        ({"enabled": "false"}, "enabled", "expected true or false"),
        ({"name": "my-app"}, "name", "not a valid plugin name"),
        ({"name": 3}, "name", "expected a string"),
        ({"version": "one"}, "version", "not a valid version"),
        ({"app_type": "game"}, "app_type", "not one of"),
        ({"dependencies": ["core >= x"]}, "dependencies", "not a valid dependency"),
        ({"permissions": "ai.use"}, "permissions", "expected a list of strings"),
        ({"routes": ["/api/(["]}, "routes", "not a valid route pattern"),
        ({"created_at": "yesterday"}, "created_at", "ISO 8601"),
        ({"health_endpoint": "health"}, "health_endpoint", "must start with '/'"),
        ({"url": "ftp://x"}, "url", "not an http(s) URL"),
        ({"config_schema": {"ai_provider": "openai"}}, "config_schema", "must be an object"),
    ],
)
def test_invalid_fields_are_named(change: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ManifestError) as caught:
        structure_manifest({**SEED_MANIFEST, **change}, "apps/my_app/plugin.json")
    assert caught.value.field == field
    assert words in caught.value.message
    assert str(caught.value).startswith(f"apps/my_app/plugin.json: field '{field}'")


def test_missing_name_is_named() -> None:
    with pytest.raises(ManifestError, match="field 'name': is required"):
        structure_manifest({"version": "1.0.0"}, "plugin.json")


def test_broken_json_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "plugin.json"
    path.write_text('{"name": "x",\n "version": }')
    with pytest.raises(ManifestError) as caught:
        load_manifest_file(path)
    assert str(path) in str(caught.value)
    assert "line 2" in str(caught.value)


def test_manifest_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "plugin.json"
    path.write_text(json.dumps(SEED_MANIFEST))
    assert load_manifest_file(path).name == "my_app"
