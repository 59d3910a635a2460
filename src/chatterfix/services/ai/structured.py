"""Structured answers from models: the prompts that ask for them and the checks they pass.

A model asked for a work-order draft or condition findings answers in JSON; the answer is
parsed, its enumerations normalised (``"High"`` is ``high``), unknown fields dropped, and
the result validated by the attrs types. An answer that fails is replaced by the rule
engine's, built from the same input plus the model's own words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from chatterfix.services.ai.types import (
    CONDITIONS,
    PRIORITIES,
    ConditionFindings,
    WorkOrderDraft,
    from_dict,
)

T = TypeVar("T")

WORK_ORDER_INSTRUCTIONS = f"""You turn a maintenance technician's words into a work-order draft.
Answer with one JSON object with these fields:
"title" (string, at most 120 characters), "description" (string),
"priority" (one of {", ".join(PRIORITIES)}), "asset_tags" (list of strings such as "P-101"),
"asset_type" (string or null), "location" (string or null),
"category" (one of mechanical, electrical, hvac, plumbing, building, safety, general),
"observations" (list of short strings), "action" (inspect, repair, replace, clean, lubricate,
calibrate, install, service or isolate), "due_within_hours" (whole number or null),
"confidence" (number from 0 to 1)."""

FINDINGS_INSTRUCTIONS = f"""You assess the condition of maintenance assets.
Answer with one JSON object with these fields:
"condition_score" (whole number 1-10, 10 = as new), "condition" (one of {", ".join(CONDITIONS)}),
"priority" (one of {", ".join(PRIORITIES)}), "findings" (list of short strings),
"recommendations" (list of short strings), "asset_tags" (list of strings),
"confidence" (number from 0 to 1)."""

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_MODEL_SET = {"provider", "model", "source", "analysis_type"}


def json_object(text: str) -> dict[str, Any]:
    """The JSON object in a model's answer (fenced or bare, with prose around it)."""
    fenced = _FENCE.search(text)
    candidate = fenced.group(1) if fenced else text
    start, end = candidate.find("{"), candidate.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("the answer holds no JSON object")
    value = json.loads(candidate[start : end + 1])
    if not isinstance(value, dict):
        raise ValueError("the answer is not a JSON object")
    return value


def _normalised(data: Mapping[str, Any], cls: type[Any]) -> dict[str, Any]:
    names = {field.name for field in attrs.fields(cls)} - _MODEL_SET
    result = {key: value for key, value in data.items() if key in names}
    for name in ("priority", "condition", "category", "action"):
        if isinstance(result.get(name), str):
            result[name] = result[name].strip().lower()
    for name in ("asset_tags", "findings", "recommendations", "observations"):
        if isinstance(result.get(name), str):
            result[name] = [result[name]]
    if isinstance(result.get("condition_score"), float) and result["condition_score"].is_integer():
        result["condition_score"] = int(result["condition_score"])
    return result


def parse_findings(
    text: str, *, provider: str, model: str, analysis_type: str
) -> ConditionFindings:
    data = _normalised(json_object(text), ConditionFindings)
    data.update(provider=provider, model=model, source="model", analysis_type=analysis_type)
    return from_dict(data, ConditionFindings)


def parse_work_order(text: str) -> WorkOrderDraft:
    return from_dict(_normalised(json_object(text), WorkOrderDraft), WorkOrderDraft)


def findings_prompt(
    analysis_type: str, description: str | None, asset: Mapping[str, Any] | None
) -> str:
    lines = [f"Analysis type: {analysis_type}"]
    if asset:
        lines.append("Asset data:")
        lines.extend(f"- {key}: {value}" for key, value in asset.items())
    if description:
        lines.append(f"Observations: {description}")
    return "\n".join(lines)
