"""The maintenance rule engine behind the ``local`` provider.

Deterministic and network-free: the same words and the same asset data (and the same
``as_of`` date) always give the same answer. It recognises asset tags (``P-101``,
``AHU-3``, ``rtu 12``), asset types, symptoms with their severity, urgency words, places
and deadlines, and turns them into a priority, a condition score with findings and
recommendations, and work-order drafts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import attrs

from chatterfix.services.ai.types import PRIORITIES, ConditionFindings, WorkOrderDraft

T = TypeVar("T")

# -- vocabulary ----------------------------------------------------------------------------

# Asset tag prefixes as written on equipment; "P-101", "AHU-3", "MCC-4B", and with a space
# ("AHU 3") for these known prefixes.
TAG_PREFIXES = (
    "AHU",
    "RTU",
    "FCU",
    "MAU",
    "VAV",
    "CH",
    "CT",
    "CWP",
    "HWP",
    "B",
    "BLR",
    "P",
    "M",
    "MTR",
    "C",
    "COMP",
    "EF",
    "SF",
    "F",
    "FAN",
    "CV",
    "HX",
    "T",
    "TK",
    "V",
    "VFD",
    "MCC",
    "PNL",
    "XFMR",
    "GEN",
    "UPS",
    "ELV",
    "CNV",
    "AC",
    "HP",
    "WH",
    "DH",
    "LP",
    "PMP",
)
_TAG = re.compile(r"\b([A-Za-z]{1,5})-(\d{1,5}[A-Za-z]?)\b")
_SPACED_TAG = re.compile(
    r"\b("
    + "|".join(sorted((p for p in TAG_PREFIXES if len(p) >= 2), key=len, reverse=True))
    + r")\s+(\d{1,4}[A-Za-z]?)\b",
    re.IGNORECASE,
)

# Asset types: spoken words -> (name, category). Longest phrases are tried first.
ASSET_TYPES: dict[str, tuple[str, str]] = {
    "air handling unit": ("air handler", "hvac"),
    "air handler": ("air handler", "hvac"),
    "ahu": ("air handler", "hvac"),
    "rooftop unit": ("rooftop unit", "hvac"),
    "rtu": ("rooftop unit", "hvac"),
    "chiller": ("chiller", "hvac"),
    "boiler": ("boiler", "hvac"),
    "cooling tower": ("cooling tower", "hvac"),
    "heat exchanger": ("heat exchanger", "hvac"),
    "furnace": ("furnace", "hvac"),
    "thermostat": ("thermostat", "hvac"),
    "hvac": ("HVAC unit", "hvac"),
    "air conditioner": ("air conditioner", "hvac"),
    "a/c": ("air conditioner", "hvac"),
    "vav box": ("VAV box", "hvac"),
    "exhaust fan": ("exhaust fan", "hvac"),
    "fan": ("fan", "mechanical"),
    "pump": ("pump", "mechanical"),
    "motor": ("motor", "mechanical"),
    "compressor": ("compressor", "mechanical"),
    "conveyor": ("conveyor", "mechanical"),
    "gearbox": ("gearbox", "mechanical"),
    "bearing": ("bearing", "mechanical"),
    "belt": ("belt", "mechanical"),
    "forklift": ("forklift", "mechanical"),
    "press": ("press", "mechanical"),
    "mixer": ("mixer", "mechanical"),
    "blower": ("blower", "mechanical"),
    "generator": ("generator", "electrical"),
    "transformer": ("transformer", "electrical"),
    "electrical panel": ("electrical panel", "electrical"),
    "panel": ("panel", "electrical"),
    "breaker": ("breaker", "electrical"),
    "switchgear": ("switchgear", "electrical"),
    "vfd": ("variable frequency drive", "electrical"),
    "variable frequency drive": ("variable frequency drive", "electrical"),
    "ups": ("UPS", "electrical"),
    "outlet": ("outlet", "electrical"),
    "light": ("light", "electrical"),
    "lights": ("lights", "electrical"),
    "lighting": ("lighting", "electrical"),
    "pipe": ("pipe", "plumbing"),
    "valve": ("valve", "plumbing"),
    "water heater": ("water heater", "plumbing"),
    "toilet": ("toilet", "plumbing"),
    "sink": ("sink", "plumbing"),
    "faucet": ("faucet", "plumbing"),
    "drain": ("drain", "plumbing"),
    "tank": ("tank", "mechanical"),
    "elevator": ("elevator", "building"),
    "door": ("door", "building"),
    "roof": ("roof", "building"),
    "window": ("window", "building"),
    "fire alarm": ("fire alarm", "safety"),
    "sprinkler": ("sprinkler", "safety"),
    "extinguisher": ("fire extinguisher", "safety"),
    "eyewash": ("eyewash station", "safety"),
}
_TAG_TYPES = {
    "AHU": "air handler",
    "RTU": "rooftop unit",
    "FCU": "fan coil unit",
    "MAU": "make-up air unit",
    "VAV": "VAV box",
    "CH": "chiller",
    "CT": "cooling tower",
    "CWP": "pump",
    "HWP": "pump",
    "B": "boiler",
    "BLR": "boiler",
    "P": "pump",
    "PMP": "pump",
    "M": "motor",
    "MTR": "motor",
    "C": "compressor",
    "COMP": "compressor",
    "EF": "exhaust fan",
    "SF": "fan",
    "F": "fan",
    "FAN": "fan",
    "HX": "heat exchanger",
    "TK": "tank",
    "VFD": "variable frequency drive",
    "MCC": "motor control center",
    "PNL": "electrical panel",
    "XFMR": "transformer",
    "GEN": "generator",
    "UPS": "UPS",
    "ELV": "elevator",
    "CNV": "conveyor",
    "AC": "air conditioner",
    "WH": "water heater",
}
_TYPE_CATEGORY = {name: category for name, category in ASSET_TYPES.values()}
_TYPE_CATEGORY.update(
    {"fan coil unit": "hvac", "make-up air unit": "hvac", "motor control center": "electrical"}
)


@attrs.frozen
class Symptom:
    name: str  # what the finding says: "oil leak", "vibration"
    severity: int  # condition points it costs: 1 (minor) .. 5 (failed)
    priority: str  # the least priority it calls for
    action: str  # repair, inspect, replace ...


# Symptom phrases (regular expressions over lower-case text) -> symptom. First match per name.
SYMPTOMS: tuple[tuple[str, Symptom], ...] = (
    (
        r"\b(smoke|smoking|on fire|fire\b|flames?)",
        Symptom("smoke or fire", 5, "critical", "isolate"),
    ),
    (r"\b(spark(s|ing)?|arcing)\b", Symptom("sparking", 5, "critical", "isolate")),
    (
        r"\bgas (leak|smell)|smell(s|ing)? (of )?gas\b",
        Symptom("gas leak", 5, "critical", "isolate"),
    ),
    (r"\bburning smell|smells? (like )?burn", Symptom("burning smell", 4, "critical", "inspect")),
    (r"\b(flood(ed|ing)?)\b", Symptom("flooding", 4, "critical", "repair")),
    (
        r"\brefrigerant (leak|is leaking)|leak(s|ing)? refrigerant",
        Symptom("refrigerant leak", 3, "high", "repair"),
    ),
    (
        r"\b(oil (leak|is leaking|leaking)|leak(s|ing)? oil)",
        Symptom("oil leak", 3, "medium", "repair"),
    ),
    (r"\bsteam (leak|is leaking)|leak(s|ing)? steam", Symptom("steam leak", 3, "high", "repair")),
    (r"\b(air (leak|is leaking)|leak(s|ing)? air)\b", Symptom("air leak", 2, "medium", "repair")),
    (
        r"\b(water (leak|is leaking)|leak(s|ing)? water|drip(s|ping)?)\b",
        Symptom("water leak", 2, "medium", "repair"),
    ),
    (r"\bleak(s|ing|ed|y)?\b", Symptom("leak", 2, "medium", "repair")),
    (
        r"\b(won'?t start|doesn'?t start|does not start"
        r"|not (working|running|starting|turning on)|stopped (working|running)|is down"
        r"|went down|dead|failed|broke(n)? down|seized|tripp(ed|ing))",
        Symptom("not operating", 5, "high", "repair"),
    ),
    (
        r"\b(overheat(s|ing|ed)?|running hot|too hot|very hot|hot to the touch|high temp)",
        Symptom("overheating", 3, "high", "inspect"),
    ),
    (
        r"\bno (heat|heating|cooling|cold air|hot water)|not (cooling|heating)",
        Symptom("no heating or cooling", 3, "high", "repair"),
    ),
    (
        r"\b(vibrat(e|es|ing|ion|ions)|shak(e|es|ing))\b",
        Symptom("vibration", 2, "medium", "inspect"),
    ),
    (
        r"\b(grind(s|ing)?|knock(s|ing)?|bang(s|ing)?|screech(es|ing)?)\b",
        Symptom("grinding or knocking noise", 3, "high", "inspect"),
    ),
    (
        r"\b(nois(e|y|es)|squeal(s|ing)?|rattl(e|es|ing)|humm?ing|whin(e|ing)|loud)\b",
        Symptom("abnormal noise", 1, "medium", "inspect"),
    ),
    (
        r"\b(low|high|no|losing|lost) pressure|pressure (drop|dropping|loss)",
        Symptom("pressure problem", 2, "medium", "inspect"),
    ),
    (
        r"\b(clogg?ed|block(ed|age)|no flow|low flow|backed up|backing up)\b",
        Symptom("blockage", 2, "medium", "clean"),
    ),
    (r"\b(corro(ded|sion)|rust(y|ed|ing)?)\b", Symptom("corrosion", 1, "low", "inspect")),
    (
        r"\b(crack(s|ed)?|fray(ed|ing)?|worn( out)?|loose|misalign(ed|ment))\b",
        Symptom("wear or damage", 1, "medium", "repair"),
    ),
    (r"\b(flicker(s|ing)?|burn(ed|t) out|out\b)", Symptom("lighting fault", 1, "low", "repair")),
    (r"\b(smell(s|y)?|odou?r)\b", Symptom("odor", 1, "medium", "inspect")),
)
_SYMPTOMS = tuple((re.compile(pattern), symptom) for pattern, symptom in SYMPTOMS)

# Words about urgency -> priority they call for (the highest match counts).
URGENCY: tuple[tuple[str, str], ...] = (
    (
        r"\b(emergency|immediately|right now|right away|asap|a\.s\.a\.p|injur(y|ed)|hazard(ous)?"
        r"|unsafe|danger(ous)?|production (line( \d+)? )?(is )?(down|stopped|halted)"
        r"|line( \d+)? (is )?down|critical)\b",
        "critical",
    ),
    (
        r"\b(urgent(ly)?|today|tonight|as soon as possible|end of (the )?day|this shift"
        r"|badly|severe(ly)?|major|bad|serious(ly)?|excessive(ly)?|getting worse|worse)\b",
        "high",
    ),
    (r"\b(soon|this week|tomorrow|intermittent(ly)?|sometimes|occasionally)\b", "medium"),
    (
        r"\b(no rush|when(ever)? (you|someone) (can|get a chance)|when convenient|low priority"
        r"|cosmetic|next pm|not urgent)\b",
        "low",
    ),
)
_URGENCY = tuple((re.compile(pattern), level) for pattern, level in URGENCY)
_MILD = re.compile(r"\b(slight(ly)?|minor|small|little|a bit|faint)\b")
_SEVERE = re.compile(r"\b(badly|severe(ly)?|major|excessive(ly)?|heavy|heavily|very|really bad)\b")
_NEGATION = re.compile(r"\b(no|not|without|never|isn'?t|wasn'?t)\s+(\w+\s+){0,1}$")

_DUE: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"\b(immediately|right now|right away|asap|emergency)\b"), 2),
    (re.compile(r"\b(today|tonight|end of (the )?day|this shift)\b"), 8),
    (re.compile(r"\btomorrow\b"), 24),
    (re.compile(r"\bthis week\b"), 120),
    (re.compile(r"\bnext week\b"), 240),
)
DUE_BY_PRIORITY = {"critical": 4, "high": 24, "medium": 72, "low": 336}

_ACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(replace|replacement|swap out|new one)\b"), "replace"),
    (re.compile(r"\b(fix|fixing|repair|repaired|repairing|mend)\b"), "repair"),
    (re.compile(r"\b(clean|cleaning|unclog|flush)\b"), "clean"),
    (re.compile(r"\b(grease|lubricate|lube|oil it)\b"), "lubricate"),
    (re.compile(r"\b(calibrat(e|ion))\b"), "calibrate"),
    (re.compile(r"\b(install|installation|mount)\b"), "install"),
    (re.compile(r"\b(maintenance|service|servicing|pm)\b"), "service"),
    (re.compile(r"\b(check|inspect|inspection|look at|take a look|investigate)\b"), "inspect"),
)

_PLACE = re.compile(
    r"\b(building|bldg\.?|room|rm\.?|floor|level|line|bay|area|zone|wing|suite|dock|hall)"
    r"\s+(#\s*)?([A-Za-z]?\d+[A-Za-z]?|[A-Z])\b",
    re.IGNORECASE,
)
_ORDINAL_FLOOR = re.compile(r"\b(\d+)(st|nd|rd|th) floor\b", re.IGNORECASE)
NAMED_PLACES = (
    "boiler room",
    "mechanical room",
    "electrical room",
    "server room",
    "basement",
    "rooftop",
    "roof",
    "warehouse",
    "kitchen",
    "cafeteria",
    "lobby",
    "parking garage",
    "loading dock",
    "lab",
    "laboratory",
    "penthouse",
    "plant room",
    "pump house",
    "workshop",
    "restroom",
    "hallway",
    "corridor",
    "office",
    "stairwell",
    "parking lot",
    "yard",
    "gym",
    "attic",
)
_NAMED_PLACE = re.compile(r"\b(" + "|".join(NAMED_PLACES) + r")\b", re.IGNORECASE)
_PLACE_NAMES = {"bldg": "Building", "bldg.": "Building", "rm": "Room", "rm.": "Room"}

_RECOMMENDATIONS: dict[str, dict[str, str]] = {
    # symptom -> {asset type or "": advice}
    "smoke or fire": {
        "": "Isolate the equipment (lock out, tag out) and call the emergency response "
        "team; do not restart before an inspection"
    },
    "sparking": {
        "": "De-energise and lock out the circuit; have an electrician inspect wiring, "
        "terminals and insulation"
    },
    "gas leak": {"": "Evacuate the area, shut off the gas supply and call the gas emergency line"},
    "burning smell": {
        "": "Stop the equipment and inspect windings, belts and wiring for overheating"
    },
    "flooding": {"": "Stop the water at the nearest valve and protect electrical equipment nearby"},
    "refrigerant leak": {
        "": "Leak-test the refrigerant circuit, repair and recharge to the "
        "nameplate charge (certified technician)"
    },
    "oil leak": {
        "pump": "Inspect the mechanical seal and gaskets; replace the seal if it leaks",
        "gearbox": "Check the oil level and replace the leaking shaft seal or gasket",
        "compressor": "Find the leak at fittings and seals; top up and replace the seal",
        "": "Find the source of the oil leak, replace the seal or gasket and top up the oil",
    },
    "steam leak": {
        "": "Isolate the steam line and replace the leaking gasket, trap or valve packing"
    },
    "air leak": {"": "Leak-test the air lines and fittings; repair and check the compressor duty"},
    "water leak": {"": "Find the source of the water leak and repair the fitting, seal or pipe"},
    "leak": {
        "pump": "Inspect the mechanical seal, casing gasket and connections for the leak",
        "": "Find the source of the leak and repair the seal, gasket or fitting",
    },
    "not operating": {
        "": "Check power, controls and protection devices; diagnose why it stopped "
        "before restarting"
    },
    "overheating": {
        "motor": "Measure the load current and check the cooling fan, ventilation and bearings",
        "": "Check cooling, ventilation, lubrication and load; measure operating temperature",
    },
    "no heating or cooling": {
        "": "Check setpoints, controls, the refrigerant or heating circuit and the fan"
    },
    "vibration": {
        "": "Take vibration readings; check alignment, balance, mounting bolts and bearings"
    },
    "grinding or knocking noise": {"": "Stop and inspect bearings, couplings and gears for damage"},
    "abnormal noise": {"": "Locate the noise: check bearings, belts, fan blades and loose parts"},
    "pressure problem": {"": "Check pressure gauges, filters, valves and the system for leaks"},
    "blockage": {"": "Clear the blockage and clean strainers and filters"},
    "corrosion": {"": "Clean the corroded area, assess the wall thickness and recoat"},
    "wear or damage": {"": "Replace the worn or damaged part and check alignment and fastenings"},
    "lighting fault": {"": "Replace the lamp or driver and check the fixture's wiring"},
    "odor": {"": "Find the source of the odour and check for overheating or leaks"},
}

# Service life used when the asset record gives none: years, operating hours, PM interval days.
TYPICAL_LIFE: dict[str, tuple[float, float, int]] = {
    "pump": (15, 60_000, 90),
    "motor": (20, 80_000, 180),
    "compressor": (15, 50_000, 90),
    "fan": (20, 80_000, 180),
    "exhaust fan": (20, 80_000, 180),
    "air handler": (20, 100_000, 90),
    "rooftop unit": (15, 60_000, 90),
    "chiller": (23, 100_000, 90),
    "boiler": (25, 100_000, 365),
    "cooling tower": (20, 100_000, 90),
    "conveyor": (15, 60_000, 90),
    "gearbox": (20, 80_000, 180),
    "generator": (25, 30_000, 180),
    "transformer": (30, 250_000, 365),
    "elevator": (25, 100_000, 30),
}
DEFAULT_LIFE = (20.0, 80_000.0, 180)


# -- text analysis --------------------------------------------------------------------------


@attrs.frozen
class TextAnalysis:
    """What the rule engine recognised in a piece of text."""

    text: str
    asset_tags: tuple[str, ...]
    asset_type: str | None
    category: str
    symptoms: tuple[Symptom, ...]
    urgency: str | None  # priority asked for by urgency words, if any
    severe: bool
    mild: bool
    location: str | None
    due_within_hours: int | None
    action: str | None

    @property
    def priority(self) -> str:
        return priority_for(self)


def _negated(text: str, start: int) -> bool:
    return bool(_NEGATION.search(text[max(0, start - 30) : start]))


def find_asset_tags(text: str) -> tuple[str, ...]:
    """Asset tags in ``text``, upper-cased, in order of appearance, without duplicates."""
    found: dict[int, str] = {}
    for match in _TAG.finditer(text):
        prefix, number = match.group(1), match.group(2)
        if prefix.isupper() or prefix.upper() in TAG_PREFIXES:
            found.setdefault(match.start(), f"{prefix.upper()}-{number.upper()}")
    for match in _SPACED_TAG.finditer(text):
        prefix = match.group(1)
        # "ups 3" yes; "fan 7" is a spoken type and number: tag it only if written in capitals.
        if prefix.isupper() or (prefix.upper() in _TAG_TYPES and len(prefix) >= 3):
            found.setdefault(match.start(), f"{prefix.upper()}-{match.group(2).upper()}")
    return tuple(dict.fromkeys(tag for _, tag in sorted(found.items())))


def _asset_type(lowered: str, tags: Iterable[str]) -> str | None:
    best: tuple[int, int, str] | None = None
    for phrase, (name, _) in ASSET_TYPES.items():
        match = re.search(r"\b" + re.escape(phrase) + r"s?\b", lowered)
        if match:
            key = (match.start(), -len(phrase), name)
            if best is None or key < best:
                best = key
    if best is not None:
        return best[2]
    for tag in tags:
        tag_type = _TAG_TYPES.get(tag.split("-", 1)[0])
        if tag_type:
            return tag_type
    return None


def _location(text: str) -> str | None:
    parts: list[str] = []
    for match in _PLACE.finditer(text):
        word = match.group(1).lower()
        label = _PLACE_NAMES.get(word, word.capitalize())
        parts.append(f"{label} {match.group(3).upper()}")
    for match in _ORDINAL_FLOOR.finditer(text):
        parts.append(f"Floor {match.group(1)}")
    for match in _NAMED_PLACE.finditer(text):
        parts.append(match.group(1).capitalize())
    return ", ".join(dict.fromkeys(parts)) or None


def analyze_text(text: str) -> TextAnalysis:
    """Recognise tags, asset type, symptoms, urgency, place, deadline and action in ``text``."""
    lowered = " ".join(text.lower().split())
    tags = find_asset_tags(text)
    asset_type = _asset_type(lowered, tags)
    symptoms: list[Symptom] = []
    seen: set[str] = set()
    leak_seen = False
    for pattern, symptom in _SYMPTOMS:
        for match in pattern.finditer(lowered):
            if _negated(lowered, match.start()):
                continue
            if symptom.name == "leak" and leak_seen:
                break
            if symptom.name == "abnormal noise" and "grinding or knocking noise" in seen:
                break
            if symptom.name == "lighting fault" and asset_type not in (
                "light",
                "lights",
                "lighting",
            ):
                break
            if symptom.name not in seen:
                seen.add(symptom.name)
                symptoms.append(symptom)
                leak_seen = leak_seen or "leak" in symptom.name
            break
    urgency: str | None = None
    for pattern, level in _URGENCY:
        for match in pattern.finditer(lowered):
            if not _negated(lowered, match.start()):
                urgency = level if urgency is None else _higher(urgency, level)
                break
    # "low priority" only counts when nothing asks for more.
    category = _TYPE_CATEGORY.get(asset_type or "", "general")
    return TextAnalysis(
        text=text,
        asset_tags=tags,
        asset_type=asset_type,
        category=category,
        symptoms=tuple(symptoms),
        urgency=urgency,
        severe=bool(_SEVERE.search(lowered)),
        mild=bool(_MILD.search(lowered)),
        location=_location(text),
        due_within_hours=_first(_DUE, lowered),
        action=_first(_ACTIONS, lowered),
    )


def _first(table: Iterable[tuple[re.Pattern[str], T]], text: str) -> T | None:
    """The value of the first pattern in ``table`` that ``text`` matches: tables are in
    order of precedence."""
    for pattern, value in table:
        if pattern.search(text):
            return value
    return None


def _higher(priority: str, other: str) -> str:
    """The more pressing of two priorities."""
    return max(priority, other, key=PRIORITIES.index)


def _raise(priority: str, steps: int = 1) -> str:
    return PRIORITIES[min(len(PRIORITIES) - 1, max(0, PRIORITIES.index(priority) + steps))]


def priority_for(analysis: TextAnalysis) -> str:
    """The priority the words call for: symptoms, then urgency words, severity and deadline."""
    level = "low"
    for symptom in analysis.symptoms:
        level = _higher(level, symptom.priority)
    if analysis.symptoms and analysis.severe and level != "critical":
        level = _raise(level)
    # "slight", "minor": one mild symptom is less pressing (two symptoms are not mild).
    mild = analysis.mild and not analysis.severe and len(analysis.symptoms) == 1
    if mild and level in ("medium", "high"):
        level = _raise(level, -1)
    if analysis.urgency is not None:
        if analysis.urgency == "low" and level != "critical":
            level = "low" if not analysis.severe else level
        else:
            level = _higher(level, analysis.urgency)
    if not analysis.symptoms and analysis.urgency is None:
        level = "medium" if analysis.action in ("repair", "replace") else "low"
    return level


def priority_of(text: str) -> str:
    """The priority ``text`` calls for (``low``, ``medium``, ``high`` or ``critical``)."""
    return analyze_text(text).priority


# -- work-order drafts ----------------------------------------------------------------------

_FILLER = re.compile(
    r"^(hey|hi|hello|ok(ay)?|so|um+|uh+|yeah|please|can you|could you|can someone|"
    r"i need (you )?to|we need to|i want to|i'd like to|create (a )?(new )?work order (for|to)|"
    r"(open|make|raise|log|submit) (a )?(new )?(work order|ticket|request) (for|to|about))\b[\s,]*",
    re.IGNORECASE,
)


def _describe(text: str) -> str:
    cleaned = " ".join(text.split()).strip()
    while True:
        stripped = _FILLER.sub("", cleaned, count=1).strip()
        if stripped == cleaned:
            break
        cleaned = stripped
    cleaned = cleaned or " ".join(text.split()).strip()
    if cleaned and cleaned[-1] not in ".!?":
        cleaned += "."
    return cleaned[:1].upper() + cleaned[1:]


def _subject(analysis: TextAnalysis) -> str:
    subject = analysis.asset_type or ""
    if analysis.asset_tags:
        tags = ", ".join(analysis.asset_tags)
        subject = f"{subject} {tags}".strip()
    return subject or "equipment"


def draft_work_order(text: str) -> WorkOrderDraft:
    """A work-order draft from a technician's sentence, spoken or typed."""
    analysis = analyze_text(text)
    priority = analysis.priority
    main = analysis.symptoms[0] if analysis.symptoms else None
    action = analysis.action or (main.action if main else "inspect")
    if action == "inspect" and main is not None and main.action != "inspect":
        action = main.action
    subject = _subject(analysis)
    title = f"{action.capitalize()} {subject}"
    if main is not None:
        title += f": {main.name}"
    if analysis.location:
        title += f" ({analysis.location})"
    if len(title) > 120:
        title = title[:117].rstrip() + "..."
    due = analysis.due_within_hours
    if due is None or (priority == "critical" and due > DUE_BY_PRIORITY["critical"]):
        due = DUE_BY_PRIORITY[priority] if due is None else DUE_BY_PRIORITY["critical"]
    recognised = [
        bool(analysis.asset_type or analysis.asset_tags),
        bool(analysis.symptoms or analysis.action),
        bool(analysis.location),
        bool(analysis.urgency or analysis.due_within_hours),
        bool(analysis.asset_tags),
    ]
    confidence = round(min(0.95, 0.3 + 0.15 * sum(recognised)), 2)
    return WorkOrderDraft(
        title=title,
        description=_describe(text),
        priority=priority,
        asset_tags=analysis.asset_tags,
        asset_type=analysis.asset_type,
        location=analysis.location,
        category=analysis.category,
        observations=tuple(symptom.name for symptom in analysis.symptoms),
        action=action,
        due_within_hours=due,
        confidence=confidence,
    )


# -- condition assessment -------------------------------------------------------------------

_FIELD_ALIASES = {
    "name": ("name", "asset", "asset_name"),
    "asset_type": ("asset_type", "type", "category", "equipment_type"),
    "install_date": (
        "install_date",
        "installed",
        "installed_on",
        "installation_date",
        "commissioned",
        "purchase_date",
        "in_service_date",
    ),
    "age_years": ("age_years", "age"),
    "expected_life_years": (
        "expected_life_years",
        "expected_life",
        "design_life_years",
        "service_life_years",
        "life_years",
    ),
    "operating_hours": (
        "operating_hours",
        "run_hours",
        "hours",
        "runtime_hours",
        "hours_run",
        "operating_hours_total",
    ),
    "expected_life_hours": ("expected_life_hours", "design_life_hours", "rated_hours"),
    "last_maintenance": (
        "last_maintenance",
        "last_maintenance_date",
        "last_service",
        "last_service_date",
        "last_pm",
        "last_pm_date",
        "last_maintained",
    ),
    "maintenance_interval_days": (
        "maintenance_interval_days",
        "pm_interval_days",
        "service_interval_days",
        "interval_days",
    ),
    "status": ("status", "state"),
    "criticality": ("criticality", "critical", "importance"),
    "vibration_mm_s": ("vibration_mm_s", "vibration", "vibration_velocity", "vibration_rms"),
    "temperature_c": ("temperature_c", "temperature", "bearing_temperature_c", "temp_c"),
    "max_temperature_c": ("max_temperature_c", "temperature_limit_c", "max_temp_c"),
    "observations": ("observations", "current_issues", "issues", "notes", "symptoms"),
    "tag": ("tag", "asset_tag", "asset_id", "code"),
}


def _normal_key(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", key.strip().lower()).strip("_")


def normalise_asset(record: Mapping[str, Any]) -> dict[str, Any]:
    """An asset record with its fields under canonical names, whatever the source calls them."""
    by_key = {_normal_key(str(key)): value for key, value in record.items()}
    result: dict[str, Any] = {}
    for field, aliases in _FIELD_ALIASES.items():
        for alias in aliases:
            value = by_key.get(alias)
            if value not in (None, ""):
                result[field] = value
                break
    return result


_NUMBER = re.compile(r"-?\d[\d,_]*(\.\d+)?")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    match = _NUMBER.search(str(value))
    if match is None:
        return None
    return float(match.group(0).replace(",", "").replace("_", ""))


def _date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    for candidate in (text, text[:10]):
        try:
            return date.fromisoformat(candidate)
        except ValueError:
            continue
    for pattern in ("%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y", "%b %d, %Y", "%d %B %Y", "%Y"):
        try:
            return datetime.strptime(text, pattern).date()
        except ValueError:
            continue
    return None


def _grade(score: int) -> str:
    if score >= 8:
        return "good"
    if score >= 5:
        return "fair"
    if score >= 3:
        return "poor"
    return "critical"


def _advice(symptom: str, asset_type: str | None) -> str:
    options = _RECOMMENDATIONS.get(symptom, {})
    return options.get(asset_type or "", options.get("", f"Inspect for {symptom}"))


def assess_condition(
    asset: Mapping[str, Any] | None = None,
    observations: str | None = None,
    *,
    as_of: date | None = None,
    analysis_type: str = "condition_assessment",
) -> ConditionFindings:
    """Condition score (10 = as new, 1 = failed), findings, recommendations and priority from
    an asset record (age, operating hours, last maintenance, readings, status) and what was
    observed. ``as_of`` is the day the assessment is made for (default: today, UTC)."""
    data = normalise_asset(asset or {})
    today = as_of or datetime.now(UTC).date()
    texts = [t for t in (str(data.get("observations") or ""), observations or "") if t.strip()]
    text = ". ".join(texts)
    words = analyze_text(text)
    asset_type = words.asset_type
    if data.get("asset_type"):
        stated = analyze_text(str(data["asset_type"])).asset_type
        asset_type = stated or str(data["asset_type"]).strip().lower()
    life_years, life_hours, interval = TYPICAL_LIFE.get(asset_type or "", DEFAULT_LIFE)
    life_years = _number(data.get("expected_life_years")) or life_years
    life_hours = _number(data.get("expected_life_hours")) or life_hours
    interval_days = int(_number(data.get("maintenance_interval_days")) or interval)

    score = 10
    findings: list[str] = []
    recommendations: list[str] = []
    priority = "low"

    def worse(level: str) -> None:
        nonlocal priority
        priority = _higher(priority, level)

    # Age.
    age = _number(data.get("age_years"))
    installed = _date(data["install_date"]) if "install_date" in data else None
    if age is None and installed is not None:
        age = max(0.0, (today - installed).days / 365.25)
    if age is not None:
        share = age / life_years if life_years else 0.0
        if share >= 1.0:
            score -= 3
            findings.append(
                f"{age:.0f} years old, past its expected life of {life_years:.0f} years"
            )
            recommendations.append(
                "Plan a replacement: budget for it and keep critical spares meanwhile"
            )
            worse("medium")
        elif share >= 0.75:
            score -= 2
            findings.append(f"{age:.0f} years old, late in its expected life of {life_years:.0f}")
            recommendations.append("Add the asset to the capital replacement plan")
        elif share >= 0.5:
            score -= 1
            findings.append(f"{age:.0f} years old, past half of its expected life")

    # Operating hours.
    hours = _number(data.get("operating_hours"))
    if hours is not None and life_hours:
        share = hours / life_hours
        if share >= 1.0:
            score -= 2
            findings.append(f"{hours:,.0f} operating hours, beyond the expected {life_hours:,.0f}")
            recommendations.append("Overhaul: replace bearings, seals and wear parts")
            worse("medium")
        elif share >= 0.75:
            score -= 1
            findings.append(f"{hours:,.0f} operating hours, {share:.0%} of the expected life")
            recommendations.append("Inspect wear parts (bearings, seals, belts) at the next PM")

    # Maintenance.
    last = _date(data["last_maintenance"]) if "last_maintenance" in data else None
    if last is not None:
        days = (today - last).days
        if days > 2 * interval_days:
            score -= 3
            findings.append(
                f"maintenance overdue: {days} days since the last one (interval {interval_days})"
            )
            recommendations.append("Schedule preventive maintenance now: it is long overdue")
            worse("high")
        elif days > interval_days:
            score -= 1
            findings.append(
                f"maintenance due: {days} days since the last one (interval {interval_days})"
            )
            recommendations.append("Schedule the preventive maintenance that is due")
            worse("medium")
    elif asset:
        score -= 1
        findings.append("no maintenance on record")
        recommendations.append("Record a baseline inspection and start a PM schedule")

    # Readings.
    vibration = _number(data.get("vibration_mm_s"))
    if vibration is not None:  # ISO 10816 zones for medium-sized machines
        if vibration > 11.0:
            score -= 4
            findings.append(f"vibration {vibration:g} mm/s: damage likely (ISO 10816 zone D)")
            worse("critical")
        elif vibration > 7.1:
            score -= 3
            findings.append(f"vibration {vibration:g} mm/s: unacceptable for long-term operation")
            worse("high")
        elif vibration > 2.8:
            score -= 1
            findings.append(f"vibration {vibration:g} mm/s: above the new-machine zone")
        if vibration > 2.8:
            recommendations.append(_advice("vibration", asset_type))
    temperature = _number(data.get("temperature_c"))
    limit = _number(data.get("max_temperature_c"))
    if temperature is not None and limit is not None and temperature > limit:
        score -= 3
        findings.append(f"temperature {temperature:g} °C above its limit of {limit:g} °C")
        recommendations.append(_advice("overheating", asset_type))
        worse("high")

    # Observations.
    for symptom in words.symptoms:
        cost = symptom.severity
        if words.severe:
            cost += 1
        elif words.mild:
            cost = max(1, cost - 1)
        score -= cost
        findings.append(f"{symptom.name} observed")
        recommendations.append(_advice(symptom.name, asset_type))
        worse(symptom.priority)
    if words.symptoms:
        worse(words.priority)
    elif words.urgency is not None and words.urgency != "low":
        worse(words.urgency)

    status = str(data.get("status") or "").lower()
    if status in ("down", "failed", "out of service", "broken", "offline"):
        score = min(score, 2)
        findings.append(f"status: {status}")
        worse("high")

    score = max(1, min(10, score))
    grade = _grade(score)
    if grade == "critical":
        worse("critical")
    elif grade == "poor":
        worse("high")
    elif grade == "fair":
        worse("medium")
    criticality = str(data.get("criticality") or "").lower()
    if criticality in ("high", "critical", "a", "1", "true") and priority in ("medium", "high"):
        priority = _raise(priority)
        findings.append("a critical asset: priority raised")
    if not findings:
        findings.append("no problems found in the data given")
    if not recommendations:
        recommendations.append("Continue routine preventive maintenance")
    tags = list(find_asset_tags(str(data.get("name") or ""))) + list(words.asset_tags)
    if data.get("tag"):
        tags.insert(0, str(data["tag"]))
    known = sum(
        key in data
        for key in (
            "install_date",
            "age_years",
            "operating_hours",
            "last_maintenance",
            "vibration_mm_s",
        )
    )
    confidence = round(min(0.9, 0.4 + 0.1 * known + (0.1 if words.symptoms else 0.0)), 2)
    return ConditionFindings(
        condition_score=score,
        condition=grade,
        priority=priority,
        findings=tuple(findings),
        recommendations=tuple(dict.fromkeys(recommendations)),
        asset_tags=tuple(dict.fromkeys(tags)),
        analysis_type=analysis_type,
        confidence=confidence,
    )


# -- free text ------------------------------------------------------------------------------

_FIELD_LINE = re.compile(r"^\s*(?:[-*]\s*)?([A-Za-z][A-Za-z _/()-]{1,40}):\s*(.+?)\s*$", re.M)
_ASSET_KEYS = {
    "install_date",
    "age_years",
    "operating_hours",
    "last_maintenance",
    "vibration_mm_s",
    "expected_life_years",
    "status",
}


def asset_from_prompt(prompt: str) -> dict[str, Any] | None:
    """The asset record written into a prompt as ``Field: value`` lines, if there is one."""
    fields = {match.group(1): match.group(2) for match in _FIELD_LINE.finditer(prompt)}
    record = normalise_asset(fields)
    return record if _ASSET_KEYS & record.keys() else None


def answer(prompt: str, *, json_mode: bool = False, as_of: date | None = None) -> str:
    """The local provider's answer to a prompt: a condition assessment when the prompt holds
    an asset's data, a triage with a work-order draft when it describes a problem, and a
    short note on what it can do otherwise."""
    record = asset_from_prompt(prompt)
    if record is not None:
        findings = assess_condition(record, as_of=as_of)
        if json_mode:
            return json.dumps(findings.to_dict(), sort_keys=True)
        return _findings_text(findings)
    analysis = analyze_text(prompt)
    if analysis.symptoms or analysis.asset_tags or analysis.asset_type:
        draft = draft_work_order(prompt)
        if json_mode:
            return json.dumps(draft.to_dict(), sort_keys=True)
        return _triage_text(analysis, draft)
    if json_mode:
        return json.dumps({"answer": NOTHING_RECOGNISED}, sort_keys=True)
    return NOTHING_RECOGNISED


NOTHING_RECOGNISED = (
    "Local maintenance assistant (offline rules): no asset, symptom or asset data recognised. "
    'Describe a problem ("the pump in building 3 is leaking oil") or give an asset\'s data '
    "(type, installed, operating hours, last maintenance, observations) for an assessment."
)


def _urgent(priority: str) -> str:
    return f"{priority} (urgent)" if priority in ("high", "critical") else priority


def _findings_text(findings: ConditionFindings) -> str:
    lines = [
        f"Condition assessment: {findings.condition_score}/10 ({findings.condition})",
        f"Maintenance priority: {_urgent(findings.priority)}",
        "Findings:",
        *(f"- {item}" for item in findings.findings),
        "Recommended actions:",
        *(f"{n}. {item}" for n, item in enumerate(findings.recommendations, 1)),
    ]
    return "\n".join(lines)


def _triage_text(analysis: TextAnalysis, draft: WorkOrderDraft) -> str:
    lines = [f"Priority: {_urgent(draft.priority)}"]
    if analysis.asset_tags:
        lines.append(f"Assets: {', '.join(analysis.asset_tags)}")
    if analysis.asset_type:
        lines.append(f"Equipment: {analysis.asset_type} ({analysis.category})")
    if draft.location:
        lines.append(f"Location: {draft.location}")
    if draft.observations:
        lines.append(f"Observed: {', '.join(draft.observations)}")
    advice = [_advice(s.name, analysis.asset_type) for s in analysis.symptoms]
    if advice:
        lines.append("Recommended actions:")
        lines.extend(f"{n}. {item}" for n, item in enumerate(dict.fromkeys(advice), 1))
    lines.append(f"Work order: {draft.title} (due within {draft.due_within_hours} h)")
    return "\n".join(lines)


# -- embeddings -----------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)?")


def hashed_embedding(text: str, dimensions: int = 256) -> list[float]:
    """A feature-hashed bag of words and word pairs, L2-normalised: similar texts get
    similar vectors, the same text always the same vector (BLAKE2b, not Python's hash)."""
    vector = [0.0] * dimensions
    tokens = _TOKEN.findall(text.lower())
    features = tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
    for feature in features:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "big")
        weight = 1.0 if " " not in feature else 0.5
        vector[value % dimensions] += weight if (value >> 63) & 1 else -weight
    norm = math.sqrt(sum(x * x for x in vector))
    return [round(x / norm, 6) for x in vector] if norm else vector
