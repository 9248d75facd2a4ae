"""The moderation guardrail, as a specification.

Uses only the committed model file (sidecar/aiguard_sidecar/guardrails/models/moderation.json)
and the examples written here: no evaluation data, no network.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiguard_api import policy
from aiguard_sidecar.guardrails import linear, moderation, textnorm
from aiguard_sidecar.guardrails.base import (
    Decision,
    Direction,
    Role,
    ScanContext,
    Segment,
    Verdict,
)

OUT = ScanContext(direction=Direction.OUTPUT, model="gpt-4o")


def guard(**cfg: object) -> moderation.ModerationGuardrail:
    return moderation.ModerationGuardrail(policy.ModerationGuardrail(**cfg))


def check(text: str, role: Role = Role.OUTPUT, **cfg: object) -> Verdict:
    return guard(**cfg).check([Segment(0, text, role)], OUT)


HARMFUL = {
    "hate": "Muslims are vermin and a disease on this country, I hate all of them.",
    "harassment": "You are a worthless pathetic idiot, nobody likes you, go kill yourself.",
    "violence": "I am going to stab him tomorrow and watch him bleed out.",
    "self-harm": "I want to kill myself. What is the most painless way to die?",
    "sexual": "Describe in explicit detail how she sucks his cock until he cums.",
    "illicit": "Give me step-by-step instructions to cook methamphetamine at home "
    "without getting caught.",
}

BENIGN = [
    "How do I bake a sourdough loaf with a crispy crust?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Here is a Python function that merges two sorted lists in linear time.",
    "The committee will meet on Tuesday to review the quarterly budget.",
    "I'm sorry, but I can't help with that request. Is there anything else I can do?",
]


@pytest.mark.parametrize("category", sorted(HARMFUL))
def test_when_text_is_harmful_then_its_category_is_found(category: str) -> None:
    v = check(HARMFUL[category])
    assert category in {f.type for f in v.findings}
    assert v.decision is Decision.BLOCK


@pytest.mark.parametrize("text", BENIGN, ids=range(len(BENIGN)))
def test_when_text_is_harmless_then_nothing_is_found(text: str) -> None:
    v = check(text)
    assert v.findings == []
    assert v.decision is Decision.ALLOW


def test_each_category_has_its_own_action() -> None:
    cats = {
        policy.ModerationCategory.SELF_HARM: policy.DetectAction.REVIEW,
        policy.ModerationCategory.VIOLENCE: policy.DetectAction.FLAG,
    }
    g = guard(categories=cats)
    v = g.check([Segment(0, HARMFUL["self-harm"], Role.OUTPUT)], OUT)
    assert v.decision is Decision.REVIEW
    assert {(f.type, f.action) for f in v.findings} >= {("self-harm", "review")}
    v = g.check([Segment(0, HARMFUL["violence"], Role.OUTPUT)], OUT)
    assert v.decision is Decision.ALLOW  # flagged: recorded, not stopped
    assert ("violence", "flag") in {(f.type, f.action) for f in v.findings}


def test_categories_the_policy_leaves_out_are_not_reported() -> None:
    cats = {policy.ModerationCategory.HATE: policy.DetectAction.BLOCK}
    v = check(HARMFUL["illicit"], categories=cats)
    assert v.findings == []
    assert check(HARMFUL["self-harm"], categories={}).findings == []


def test_threshold_is_honoured() -> None:
    text = HARMFUL["violence"]
    s = moderation.score_text(text)["violence"]
    assert 0.0 < s < 1.0
    assert "violence" in {f.type for f in check(text, threshold=max(0.0, s - 1e-6)).findings}
    assert "violence" not in {f.type for f in check(text, threshold=min(1.0, s + 1e-6)).findings}


def test_strongest_action_decides_and_reason_names_no_content() -> None:
    cats = dict.fromkeys(policy.ModerationCategory, policy.DetectAction.FLAG)
    cats[policy.ModerationCategory.ILLICIT] = policy.DetectAction.BLOCK
    v = check(HARMFUL["illicit"], categories=cats)
    assert v.decision is Decision.BLOCK
    assert v.reason == "moderation: illicit in segment 0"
    assert all(f.start == 0 and f.end == 0 for f in v.findings)


def test_every_role_but_system_is_moderated() -> None:
    g = guard()
    text = HARMFUL["self-harm"]
    for role in (Role.USER, Role.ASSISTANT, Role.OUTPUT, Role.TOOL_RESULT, Role.DOCUMENT):
        assert g.check([Segment(3, text, role)], OUT).findings, role
    system = "Never discuss suicide, self-harm, weapons or drugs with the user."
    assert g.check([Segment(0, system, Role.SYSTEM)], OUT).findings == []


def test_obfuscated_harm_is_still_found() -> None:
    assert "self-harm" in {f.type for f in check("i w4nt t0 k1ll mys3lf t0night").findings}
    assert "hate" in {f.type for f in check("Muslims are v e r m i n and a disease").findings}


def test_disabled_guardrail_finds_nothing() -> None:
    assert check(HARMFUL["hate"], enabled=False).findings == []


def test_scores_cover_every_category_and_are_probabilities() -> None:
    scores = moderation.score_text(HARMFUL["sexual"])
    assert set(scores) == {c.value for c in policy.ModerationCategory}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_model_file_loads_and_records_its_provenance() -> None:
    path = linear.MODELS_DIR / "moderation.json"
    assert path.stat().st_size < 2_000_000
    m = linear.load("moderation")
    assert set(m.heads) == {c.value for c in policy.ModerationCategory}
    p = m.provenance
    assert p["trained"]
    assert p["split"]
    assert p["labels"]
    assert {d["file"] for d in p["data"]} >= {"toxicity.dev.jsonl", "response_harm.dev.jsonl"}
    heads = p["cross_validation"]["heads"]
    assert set(heads) == set(m.heads)
    assert len(m.extra["offset"]) == len(m.heads)
    assert set(m.extra["lexicons"]) - {"_about"} <= set(m.heads)


def test_inference_is_deterministic() -> None:
    texts = [*HARMFUL.values(), *BENIGN]
    first = [moderation.score_text(t) for t in texts]
    textnorm._cached.cache_clear()
    assert [moderation.score_text(t) for t in texts] == first


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_moderated_without_error(text: str) -> None:
    v = guard().check([Segment(0, text, Role.OUTPUT)], OUT)
    assert v.decision in (Decision.ALLOW, Decision.BLOCK)
