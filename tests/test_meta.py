"""Every hook is tested and documented, with its exact argument names."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from chatterfix import hookspecs
from chatterfix.hookcalls import hookspecs_names

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(hookspecs_names())


def signature(name: str) -> str:
    parameters = inspect.signature(getattr(hookspecs, name)).parameters
    return f"{name}({', '.join(parameters)})"


def test_the_design_hooks_and_migrations_are_all_specified() -> None:
    design = sorted(
        [
            "register_routes",
            "register_middleware",
            "register_event_handlers",
            "register_models",
            "register_migrations",
            "register_permissions",
            "register_ai_providers",
            "register_commands",
            "config_schema",
            "startup",
            "shutdown",
            "health_check",
        ]
    )
    assert design == HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_reference_docstring(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc.splitlines()) >= 3, f"{hook} needs a real docstring"
    for parameter in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert f":param {parameter}:" in doc


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    names = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        names.update(re.findall(r"def (test_\w+)", path.read_text()))
    assert any(f"hook_{hook}" in name for name in names), f"no test_hook_{hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_arguments(hook: str) -> None:
    reference = (ROOT / "docs" / "hooks.md").read_text()
    assert f"`{signature(hook)}`" in reference
