"""The offline ``local`` provider: deterministic, useful maintenance answers."""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import pytest

import chatterfix
from chatterfix.services.ai import rules
from chatterfix.services.ai.errors import AIError

pytestmark = pytest.mark.anyio

TODAY = date(2025, 3, 1)

# sentence -> expected (priority, asset tags, asset type, location, first observation, action)
SENTENCES: list[tuple[str, tuple[Any, ...]]] = [
    (
        "the pump in building 3 is leaking oil badly, needs fixing today",
        ("high", (), "pump", "Building 3", "oil leak", "repair"),
    ),
    ("Create work order for pump maintenance", ("low", (), "pump", None, None, "service")),
    (
        "AHU-3 on the roof is making a loud grinding noise",
        ("high", ("AHU-3",), "air handler", "Roof", "grinding or knocking noise", "inspect"),
    ),
    (
        "There's smoke coming from the electrical panel in room 204, emergency!",
        ("critical", (), "electrical panel", "Room 204", "smoke or fire", "isolate"),
    ),
    (
        "P-101 vibrating a lot, can someone check it this week",
        ("medium", ("P-101",), "pump", None, "vibration", "inspect"),
    ),
    (
        "Lights flickering in the 2nd floor hallway, no rush",
        ("low", (), "lights", "Floor 2, Hallway", "lighting fault", "repair"),
    ),
    (
        "compressor C-12 won't start, production line 4 is down",
        ("critical", ("C-12",), "compressor", "Line 4", "not operating", "repair"),
    ),
    (
        "slight drip from the valve under the sink in the kitchen",
        ("low", (), "valve", "Kitchen", "water leak", "repair"),
    ),
    (
        "rtu 12 not cooling, warehouse is getting hot",
        ("high", ("RTU-12",), "rooftop unit", "Warehouse", "no heating or cooling", "repair"),
    ),
    (
        "Boiler B-2 in the boiler room is knocking and there's a small water leak",
        ("high", ("B-2",), "boiler", "Boiler room", "water leak", "repair"),
    ),
    (
        "conveyor CNV-7 belt is frayed and squealing, replace it tomorrow",
        ("medium", ("CNV-7",), "conveyor", None, "abnormal noise", "replace"),
    ),
    (
        "gas smell near the water heater in bldg 5",
        ("critical", (), "water heater", "Building 5", "gas leak", "isolate"),
    ),
    (
        "the motor on P-14 is overheating and tripping the breaker",
        ("high", ("P-14",), "motor", None, "not operating", "repair"),
    ),
    (
        "chiller CH-1 refrigerant leak detected by the sensor",
        ("high", ("CH-1",), "chiller", None, "refrigerant leak", "repair"),
    ),
    (
        "rust on the cooling tower basin, not urgent, next PM is fine",
        ("low", (), "cooling tower", None, "corrosion", "service"),
    ),
]


@pytest.mark.parametrize(("sentence", "expected"), SENTENCES)
def test_work_order_drafts_from_technician_sentences(
    sentence: str, expected: tuple[Any, ...]
) -> None:
    priority, tags, asset_type, location, observation, action = expected
    draft = rules.draft_work_order(sentence)
    assert draft.priority == priority
    assert draft.asset_tags == tags
    assert draft.asset_type == asset_type
    assert draft.location == location
    assert (draft.observations[0] if draft.observations else None) == observation
    assert draft.action == action
    assert draft.title and len(draft.title) <= 120
    assert draft.description.endswith((".", "!", "?"))
    assert (
        draft.due_within_hours
        == {
            "critical": min(4, draft.due_within_hours or 4),
            "high": draft.due_within_hours,
            "medium": draft.due_within_hours,
            "low": 336,
        }[priority]
    )
    assert 0.3 <= draft.confidence <= 0.95


def test_draft_details() -> None:
    draft = rules.draft_work_order(
        "the pump in building 3 is leaking oil badly, needs fixing today"
    )
    assert draft.title == "Repair pump: oil leak (Building 3)"
    assert draft.description == "The pump in building 3 is leaking oil badly, needs fixing today."
    assert draft.category == "mechanical" and draft.due_within_hours == 8
    smoke = rules.draft_work_order("smoke from panel PNL-2, emergency")
    assert smoke.due_within_hours == 2 and smoke.category == "electrical"


def test_negation_and_urgency_words() -> None:
    assert rules.analyze_text("the boiler is not leaking").symptoms == ()
    assert rules.priority_of("urgent: P-3 is noisy") == "high"
    assert rules.priority_of("P-3 is slightly noisy") == "low"
    assert rules.priority_of("someone got injured near the press") == "critical"
    assert rules.find_asset_tags("check AHU-3, p-101, ahu 4 and MCC-4B; not COVID-19") == (
        "AHU-3",
        "P-101",
        "AHU-4",
        "MCC-4B",
        "COVID-19",
    )


ASSETS: list[tuple[dict[str, Any], str | None, tuple[int, int], str, str]] = [
    # record, observations, score range, condition, priority
    (
        {
            "name": "Chilled water pump P-101",
            "asset_type": "centrifugal pump",
            "install_date": "2021-06-01",
            "operating_hours": 12000,
            "last_maintenance": "2025-01-15",
        },
        None,
        (10, 10),
        "good",
        "low",
    ),
    (
        {
            "name": "Boiler feed pump P-7",
            "asset_type": "pump",
            "install_date": "2008-05-01",
            "operating_hours": 72000,
            "last_maintenance": "2024-01-10",
        },
        "vibration and an oil leak at the seal",
        (1, 2),
        "critical",
        "critical",
    ),
    (
        {
            "name": "AHU-3",
            "type": "air handler",
            "age": "12 years",
            "Operating Hours": "61,000",
            "last_pm": "2024-10-20",
        },
        "belt squealing",
        (5, 8),
        "fair",
        "medium",
    ),
    (
        {
            "name": "Compressor C-2",
            "asset_type": "compressor",
            "install_date": "2015-01-01",
            "last_maintenance": "2024-11-01",
            "vibration_mm_s": 8.4,
            "criticality": "high",
        },
        None,
        (3, 6),
        "fair",
        "critical",
    ),
    (
        {"name": "Motor M-9", "asset_type": "motor", "status": "down"},
        "won't start, burning smell",
        (1, 2),
        "critical",
        "critical",
    ),
    (
        {
            "name": "Exhaust fan EF-1",
            "asset_type": "exhaust fan",
            "install_date": "2019-04-01",
            "last_maintenance": "2024-06-01",
            "temperature_c": 95,
            "max_temperature_c": 80,
        },
        None,
        (4, 7),
        "fair",
        "high",
    ),
]


@pytest.mark.parametrize(("record", "observations", "scores", "condition", "priority"), ASSETS)
def test_condition_assessment_of_asset_records(
    record: dict[str, Any],
    observations: str | None,
    scores: tuple[int, int],
    condition: str,
    priority: str,
) -> None:
    findings = rules.assess_condition(record, observations, as_of=TODAY)
    assert scores[0] <= findings.condition_score <= scores[1], findings
    assert findings.condition == condition
    assert findings.priority == priority
    assert findings.findings and findings.recommendations


def test_assessment_findings_say_why() -> None:
    findings = rules.assess_condition(ASSETS[1][0], ASSETS[1][1], as_of=TODAY)
    assert findings.findings == (
        "17 years old, past its expected life of 15 years",
        "72,000 operating hours, beyond the expected 60,000",
        "maintenance overdue: 416 days since the last one (interval 90)",
        "oil leak observed",
        "vibration observed",
    )
    assert findings.asset_tags == ("P-7",)
    assert any("mechanical seal" in r for r in findings.recommendations)
    assert any("replacement" in r for r in findings.recommendations)


def test_same_input_same_output() -> None:
    prompt = "P-101 leaking oil in building 3, urgent"
    assert rules.answer(prompt) == rules.answer(prompt)
    assert rules.draft_work_order(prompt) == rules.draft_work_order(prompt)
    first = rules.assess_condition(ASSETS[1][0], "vibration", as_of=TODAY)
    assert first == rules.assess_condition(ASSETS[1][0], "vibration", as_of=TODAY)
    assert rules.hashed_embedding(prompt) == rules.hashed_embedding(prompt)


def test_hashed_embeddings() -> None:
    def cosine(a: str, b: str) -> float:
        x, y = rules.hashed_embedding(a), rules.hashed_embedding(b)
        return sum(i * j for i, j in zip(x, y, strict=True))

    vector = rules.hashed_embedding("pump leaking oil")
    assert len(vector) == 256 and math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-4)
    similar = cosine("pump leaking oil at the seal", "oil leaking from the pump seal")
    unrelated = cosine("pump leaking oil at the seal", "replace lights in the lobby")
    assert similar > unrelated + 0.3
    assert rules.hashed_embedding("") == [0.0] * 256


SEED_PROMPT = """
    Analyze this asset condition:
    Asset: Boiler feed pump P-7
    Type: pump
    Last Maintenance: 2024-01-10
    Operating Hours: 72000
    Current Issues: vibration and an oil leak at the seal

    Provide:
    1. Condition assessment (1-10 scale)
    2. Recommended actions
    3. Maintenance priority
    """


async def test_the_seed_call_forms_work_offline() -> None:
    platform = chatterfix.Platform(builtins=False, load_entrypoints=False)
    async with platform:
        from chatterfix import shared_services

        # Example 1 of the seed: the asset analyzer.
        analysis = await shared_services.ai.generate_text(SEED_PROMPT)
        assert analysis.startswith("Condition assessment: ")
        assert "Maintenance priority: critical (urgent)" in analysis
        assert "urgent" in analysis.lower()  # the seed's own check
        assert "Recommended actions:" in analysis
        # The AI provider service section, as written.
        response = await shared_services.ai.generate_text(
            prompt="Analyze this equipment failure", provider="local", model="rules"
        )
        assert isinstance(response, str)
        analysis_result = await shared_services.ai.analyze_image(
            image_description="Pump with unusual vibration",
            analysis_type="condition_assessment",
        )
        assert analysis_result.findings == ("vibration observed",)
        result = await shared_services.ai.process_voice_to_text(
            voice_text="Create work order for pump maintenance"
        )
        assert result.work_order.title == "Service pump"
        # The seed's health check: the openai provider has no key here, which is reported.
        try:
            await shared_services.ai.generate_text("test", provider="openai", api_key=None)
            status = "healthy"
        except AIError as exc:
            status = "unhealthy"
            assert "OPENAI_API_KEY" in str(exc) or "could not be reached" in str(exc)
        assert status in ("healthy", "unhealthy")
        types = [e.type for e in platform.events.history]
        assert types.count("ai.analysis.completed") == 4


async def test_local_streaming_and_options() -> None:
    platform = chatterfix.Platform(builtins=False, load_entrypoints=False)
    ai = platform.ai
    chunks = [c async for c in ai.stream_text("AHU-3 grinding noise")]
    text = "".join(c.text for c in chunks)
    assert text == await ai.generate_text("AHU-3 grinding noise")
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None
    short = await ai.generate_text("AHU-3 grinding noise", max_tokens=3)
    assert short == "Priority: high (urgent)"
    as_json = await ai.generate_text("AHU-3 grinding noise", json_mode=True)
    assert '"asset_tags": ["AHU-3"]' in as_json
    assert "no asset, symptom or asset data recognised" in await ai.generate_text("hello")
