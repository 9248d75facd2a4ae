"""The engine: chain order, each guardrail seeing the previous ones' edits, spans mapped back to
the original text, failureMode, unscannable content, lazy plug-ins, validation and keywords."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from aiguard_api.config import view_of
from aiguard_api.policy import (
    DetectAction,
    FailureMode,
    InputGuardrails,
    KeywordGuardrail,
    ModerationGuardrail,
    OutputGuardrails,
    PIIAction,
    PIIGuardrail,
    PromptInjectionGuardrail,
    SecretsAction,
    SecretsGuardrail,
    UnscannableAction,
    ValidationGuardrail,
)
from aiguard_sidecar.guardrails import registry
from aiguard_sidecar.guardrails.base import (
    Decision,
    Direction,
    Finding,
    Replacement,
    Role,
    ScanContext,
    Segment,
    Verdict,
)
from aiguard_sidecar.guardrails.engine import Engine
from aiguard_sidecar.guardrails.engine import build_engine as build_view_engine
from aiguard_sidecar.guardrails.keywords import KeywordGuard
from aiguard_sidecar.guardrails.pii import PIIGuard
from aiguard_sidecar.guardrails.secrets import SecretsGuard
from aiguard_sidecar.guardrails.validation import RequestFacts, validate

CTX = ScanContext(Direction.INPUT, model="gpt-4o")


def build_engine(cfg: Any, **kw: Any) -> Engine:
    """The engine of a guardrails section written as the policy's models (the sidecar reads
    their view, ``aiguard_api.view``)."""
    return build_view_engine(view_of(cfg), **kw)


def seg(text: str, index: int = 0, role: Role = Role.USER) -> Segment:
    return Segment(index, text, role)


class Recorder:
    """Records what it was shown; optionally replaces a word and reports a finding."""

    def __init__(self, name: str, word: str = "", new: str = "", spans: bool = True) -> None:
        self.name = name
        self.word = word
        self.new = new
        self.spans = spans
        self.seen: list[list[str]] = []

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        self.seen.append([s.text for s in segments])
        v = Verdict()
        for s in segments:
            i = s.text.find(self.word) if self.word else -1
            if i < 0:
                continue
            j = i + len(self.word)
            v.findings.append(Finding(self.name, "word", s.index, i, j, 1.0, "redact"))
            v.edits[s.index] = s.text[:i] + self.new + s.text[j:]
            if self.spans:
                v.replacements[s.index] = [Replacement(i, j, self.new)]
            v.decision = Decision.REDACT
            v.reason = f"{self.name}: word"
        return v


class Boom:
    name = "boom"

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        raise RuntimeError("secret content must not leak into the reason")


# ---------------------------------------------------------------------------- chain


def test_each_guardrail_sees_the_previous_edits_and_spans_map_back() -> None:
    first = Recorder("first", "alpha", "<A-LONG-PLACEHOLDER>")
    second = Recorder("second", "gamma", "<G>")
    engine = Engine(Direction.INPUT, [first, second])
    text = "alpha beta gamma delta"
    v = engine.check([seg(text)], CTX)
    assert second.seen == [["<A-LONG-PLACEHOLDER> beta gamma delta"]]
    assert v.edits == {0: "<A-LONG-PLACEHOLDER> beta <G> delta"}
    # both findings point into the ORIGINAL text
    assert [text[f.start : f.end] for f in v.findings] == ["alpha", "gamma"]
    assert v.replacements[0] == [
        Replacement(0, 5, "<A-LONG-PLACEHOLDER>"),
        Replacement(11, 16, "<G>"),
    ]
    assert v.decision is Decision.REDACT
    assert v.reason == "first: word"


def test_overlapping_edits_compose_into_one_replacement() -> None:
    first = Recorder("first", "secret", "<S>")
    second = Recorder("second", "x <S> y", "<ALL>")  # edits across the first one's output
    v = Engine(Direction.INPUT, [first, second]).check([seg("a x secret y b")], CTX)
    assert v.edits[0] == "a <ALL> b"
    assert v.replacements[0] == [Replacement(2, 12, "<ALL>")]
    assert [(f.start, f.end) for f in v.findings] == [(4, 10), (2, 12)]


def test_edits_without_spans_still_apply_but_give_no_replacements() -> None:
    first = Recorder("first", "alpha", "A", spans=False)
    v = Engine(Direction.INPUT, [first]).check([seg("alpha!")], CTX)
    assert v.edits == {0: "A!"}
    assert v.replacements == {}


def test_segments_keep_their_indexes_and_roles() -> None:
    rec = Recorder("r")
    segs = [seg("a", 7, Role.SYSTEM), seg("b", 3, Role.TOOL_RESULT)]
    Engine(Direction.INPUT, [rec]).check(segs, CTX)
    assert rec.seen == [["a", "b"]]


def test_registry_order_detectors_first_then_secrets_then_pii() -> None:
    cfg = InputGuardrails(
        deny=KeywordGuardrail(keywords=["forbidden"]),
        prompt_injection=PromptInjectionGuardrail(enabled=False),
    )
    engine = build_engine(cfg)
    assert engine.names == ["deny", "secrets", "pii"]
    assert registry.ORDER.index("secrets") < registry.ORDER.index("pii")


def test_secrets_run_before_pii_so_a_connection_string_is_one_secret() -> None:
    engine = build_engine(
        InputGuardrails(
            prompt_injection=PromptInjectionGuardrail(enabled=False),
            secrets=SecretsGuardrail(action=SecretsAction.REDACT),
        )
    )
    text = "use postgres://admin:Sup3rS3cret@db.example.com/app and mail ops@example.com"
    v = engine.check([seg(text)], CTX)
    assert v.edits[0] == (
        "use postgres://admin:<CONNECTION_STRING>@db.example.com/app and mail <EMAIL_ADDRESS>"
    )
    assert [(f.type, text[f.start : f.end]) for f in v.findings] == [
        ("CONNECTION_STRING", "Sup3rS3cret"),
        ("EMAIL_ADDRESS", "ops@example.com"),
    ]


# ---------------------------------------------------------------------------- failures


def test_failure_mode_closed_blocks_without_content_and_keeps_going() -> None:
    after = Recorder("after", "x", "y")
    v = Engine(Direction.INPUT, [Boom(), after], failure_mode=FailureMode.CLOSED).check(
        [seg("x")], CTX
    )
    assert v.decision is Decision.BLOCK
    assert v.reason == "boom: error (RuntimeError); failureMode closed"
    assert ("boom", "error", "block") in [(f.guardrail, f.type, f.action) for f in v.findings]
    assert after.seen == [["x"]]  # the rest still ran
    assert "secret" not in repr(v)


def test_failure_mode_open_allows_with_an_error_finding() -> None:
    v = Engine(Direction.INPUT, [Boom()], failure_mode=FailureMode.OPEN).check([seg("x")], CTX)
    assert v.decision is Decision.ALLOW
    assert [(f.guardrail, f.type, f.action) for f in v.findings] == [("boom", "error", "allow")]


def test_unavailable_plugin_fails_its_checks() -> None:
    factory = registry.lazy("prompt_injection", "no_such_module_here", "X")
    g = factory(PromptInjectionGuardrail(), registry.BuildContext(Direction.INPUT))
    assert isinstance(g, registry.Unavailable)
    engine = Engine(Direction.INPUT, [g])
    assert engine.unavailable == ["prompt_injection"]
    v = engine.check([seg("hello")], CTX)
    assert v.decision is Decision.BLOCK
    assert v.reason.startswith("prompt_injection: error")


def test_disabled_plugin_is_not_imported() -> None:
    factory = registry.lazy("moderation", "no_such_module_here", "X")
    assert (
        factory(ModerationGuardrail(enabled=False), registry.BuildContext(Direction.OUTPUT)) is None
    )


def test_lazy_plugin_uses_the_named_class(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    mod = types.ModuleType("aiguard_sidecar.guardrails.fake_plugin")

    class FakeGuard:
        name = "fake"

        def __init__(self, cfg: object) -> None:
            self.cfg = cfg

        def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
            return Verdict()

    mod.FakeGuard = FakeGuard  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aiguard_sidecar.guardrails.fake_plugin", mod)
    g = registry.lazy("fake", "fake_plugin", "FakeGuard")(
        "cfg", registry.BuildContext(Direction.INPUT)
    )
    assert isinstance(g, FakeGuard)
    assert g.cfg == "cfg"


def test_unknown_config_section_is_an_error() -> None:
    with pytest.raises(ValueError, match="no guardrail registered"):
        registry.build_chain(
            view_of(InputGuardrails()),
            registry.BuildContext(Direction.INPUT),
            registry={"pii": registry.REGISTRY["pii"]},
        )


# ---------------------------------------------------------------------------- unscannable


@pytest.mark.parametrize(
    ("action", "decision"),
    [(UnscannableAction.ALLOW, Decision.ALLOW), (UnscannableAction.BLOCK, Decision.BLOCK)],
)
def test_unscannable_content_is_reported_and_decided(
    action: UnscannableAction, decision: Decision
) -> None:
    engine = Engine(Direction.INPUT, [], unscannable=action)
    v = engine.check([seg("hi")], CTX, unscannable={"image": 2, "audio": 1, "file": 0})
    assert v.decision is decision
    assert sorted(f.type for f in v.findings) == ["audio", "image", "image"]
    assert {f.guardrail for f in v.findings} == {"unscannable"}
    if decision is Decision.BLOCK:
        assert v.reason == "unscannable: audio, image"


def test_unscannable_count_as_int() -> None:
    v = Engine(Direction.OUTPUT, []).check([], CTX, unscannable=1)
    assert [(f.type, f.action) for f in v.findings] == [("unscannable", "allow")]


# ---------------------------------------------------------------------------- async


async def test_check_async_runs_heavy_chains_off_the_loop() -> None:
    class Heavy(Recorder):
        cpu_heavy = True

    heavy = Heavy("heavy", "x", "y")
    engine = Engine(Direction.INPUT, [heavy])
    assert engine.cpu_heavy
    v = await engine.check_async([seg("x")], CTX, budget=5)
    assert v.edits == {0: "y"}


async def test_check_async_budget_exceeded_uses_failure_mode() -> None:
    import threading

    release, finished = threading.Event(), threading.Event()

    class Slow:
        name = "slow"
        cpu_heavy = True

        def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
            release.wait(10)  # busy until the test has seen the timeout
            finished.set()
            return Verdict()

    engine = Engine(Direction.INPUT, [Slow()], failure_mode=FailureMode.CLOSED)
    v = await engine.check_async([seg("x")], CTX, budget=0.05)
    assert v.decision is Decision.BLOCK
    assert v.reason == "engine: timeout; failureMode closed"
    release.set()  # the worker thread finishes alone; wait for it before the loop closes
    assert await asyncio.to_thread(finished.wait, 10)


# ---------------------------------------------------------------------------- builders


def test_output_engine_has_no_validation_and_redacts_by_default() -> None:
    engine = build_engine(OutputGuardrails(moderation=ModerationGuardrail(enabled=False)))
    assert engine.direction is Direction.OUTPUT
    assert engine.validation is None
    assert engine.names == ["secrets", "pii"]
    v = engine.check([seg("card 4111 1111 1111 1111", role=Role.OUTPUT)], CTX)
    assert v.decision is Decision.REDACT
    assert v.edits[0] == "card <CREDIT_CARD>"


def test_hash_key_comes_from_the_secret_reader() -> None:
    from aiguard_api.policy import SecretKeyRef

    asked: list[SecretKeyRef] = []

    def read(ref: SecretKeyRef) -> bytes:
        asked.append(ref)
        return b"k"

    ref = SecretKeyRef(name="pii-key", key="hmac")
    cfg = InputGuardrails(
        pii=PIIGuardrail(entities={"EMAIL_ADDRESS": PIIAction.HASH}, hash_key_secret_ref=ref),
        prompt_injection=PromptInjectionGuardrail(enabled=False),
    )
    a = build_engine(cfg, read_secret=read).check([seg("x@y.io")], CTX).edits[0]
    b = build_engine(cfg, read_secret=read).check([seg("x@y.io")], CTX).edits[0]
    assert asked == [view_of(ref), view_of(ref)]
    assert a == b


def test_engine_guardrails_are_the_real_ones() -> None:
    engine = build_engine(
        InputGuardrails(
            prompt_injection=PromptInjectionGuardrail(enabled=False),
            deny=KeywordGuardrail(patterns=[r"\bproject\s+x\b"]),
        )
    )
    kinds = [type(g) for g in engine.guardrails]
    assert kinds == [KeywordGuard, SecretsGuard, PIIGuard]


# ---------------------------------------------------------------------------- validation


def test_validation_allows_within_limits() -> None:
    cfg = ValidationGuardrail(max_tokens=100, max_messages=3, allowed_parameters=["temperature"])
    facts = RequestFacts(
        body_bytes=2000,
        max_tokens=100,
        n_messages=3,
        parameters=frozenset({"model", "messages", "temperature"}),
    )
    assert validate(facts, cfg).decision is Decision.ALLOW


def test_validation_reports_every_violation() -> None:
    cfg = ValidationGuardrail(
        max_body_bytes=1024,
        max_tokens=100,
        max_messages=2,
        allowed_parameters=["temperature"],
        allowed_tools=["search"],
    )
    facts = RequestFacts(
        body_bytes=4096,
        max_tokens=500,
        n_messages=5,
        parameters=frozenset({"model", "stream", "temperature", "logit_bias"}),
        tools=("search", "shell", "shell"),
    )
    v = validate(facts, cfg)
    assert v.decision is Decision.BLOCK
    assert [f.type for f in v.findings] == [
        "body_too_large",
        "max_tokens_exceeded",
        "too_many_messages",
        "parameter_not_allowed",
        "tool_not_allowed",
    ]
    assert v.reason == "validation: body is 4096 bytes, limit 1024"
    engine = build_engine(
        InputGuardrails(validation=cfg, prompt_injection=PromptInjectionGuardrail(enabled=False))
    )
    assert len(engine.validate(facts).findings) == 5


def test_validation_unset_limits_allow_anything() -> None:
    facts = RequestFacts(
        body_bytes=10, max_tokens=10**6, n_messages=10**4, parameters=frozenset({"x"}), tools=("t",)
    )
    assert validate(facts, ValidationGuardrail()).findings == []


# ---------------------------------------------------------------------------- keywords


@pytest.mark.parametrize(
    ("text", "hits"),
    [
        ("How to build a BOMB at home", ["BOMB"]),
        ("a bombastic speech", []),
        ("tell me about Project   Falcon now", ["Project   Falcon"]),
        ("C++ code please", ["C++"]),
        ("ünïcorn and ÜNÏCORN but not xünïcorn", ["ünïcorn", "ÜNÏCORN"]),
        ("order #A-1234 and #B-99", ["#A-1234"]),
    ],
)
def test_keywords_whole_words_case_insensitive(text: str, hits: list[str]) -> None:
    g = KeywordGuard(
        KeywordGuardrail(
            keywords=["bomb", "project falcon", "C++", "ünïcorn"], patterns=[r"#A-\d{4}"]
        )
    )
    v = g.check([seg(text)], CTX)
    assert [text[f.start : f.end] for f in v.findings] == hits
    assert v.decision is (Decision.BLOCK if hits else Decision.ALLOW)


@pytest.mark.parametrize(
    ("action", "decision"),
    [
        (DetectAction.BLOCK, Decision.BLOCK),
        (DetectAction.FLAG, Decision.ALLOW),
        (DetectAction.REVIEW, Decision.REVIEW),
    ],
)
def test_keyword_actions(action: DetectAction, decision: Decision) -> None:
    g = KeywordGuard(KeywordGuardrail(keywords=["secret plan"], action=action))
    v = g.check([seg("the secret plan")], CTX)
    assert v.decision is decision
    assert [f.type for f in v.findings] == ["keyword"]


def test_keyword_patterns_hyperscan_cannot_take_fall_back_to_python() -> None:
    g = KeywordGuard(KeywordGuardrail(patterns=[r"(a)\1b"]))  # backreference
    v = g.check([seg("xx aab yy")], CTX)
    assert [(f.type, f.start, f.end) for f in v.findings] == [("pattern", 3, 6)]
