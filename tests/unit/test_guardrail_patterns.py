"""The shared Hyperscan matcher (guardrails/patterns.py): what it scans must not depend on how.

The matcher scans an ASCII view of the text (each non-ASCII character as one ``?``) for rules
without Unicode semantics, and UTF-8 for the rest. These tests hold it to a plain reference:
every rule compiled alone, scanned over UTF-8, byte offsets decoded back to characters.
"""

from __future__ import annotations

import gc
import weakref

import hyperscan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiguard_api.config import view_of
from aiguard_api.policy import (
    CustomPattern,
    DenyList,
    InputGuardrails,
    OutputGuardrails,
    PIIAction,
    PIIGuardrail,
)
from aiguard_sidecar.guardrails import patterns
from aiguard_sidecar.guardrails.base import Direction, Role, ScanContext, Segment
from aiguard_sidecar.guardrails.engine import build_engine
from aiguard_sidecar.guardrails.pii import PIIGuard
from aiguard_sidecar.guardrails.secrets import SECRET_RULES

ALL_PII = tuple(r for rules in patterns.PII_RULES.values() for r in rules)
MATCHERS = ((ALL_PII, patterns.Matcher(ALL_PII)), (SECRET_RULES, patterns.Matcher(SECRET_RULES)))


_REFERENCE: dict[int, object] = {}


def reference_hits(rules: tuple[patterns.Rule, ...], text: str) -> set[tuple[int, int, int]]:
    """Every rule in one database over the UTF-8 bytes of ``text``; offsets decoded to
    characters one by one."""
    db = _REFERENCE.get(id(rules))
    if db is None:
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        db.compile(
            expressions=[patterns._expression(r) for r in rules],
            ids=list(range(len(rules))),
            elements=len(rules),
            flags=[patterns._flags(r) for r in rules],
        )
        _REFERENCE[id(rules)] = db
    data = text.encode("utf-8", "replace")
    hits: list[tuple[int, int, int]] = []
    db.scan(data, match_event_handler=patterns._on_match, context=hits)  # type: ignore[attr-defined]

    def char(b: int) -> int:
        return len(data[:b].decode("utf-8", "replace"))

    return {(r, char(s), char(e)) for r, s, e in hits}


VALUES = st.sampled_from(
    [
        "bob@example.org",
        "4111 1111 1111 1111",
        "536-22-1234",
        "+1-202-555-0143",
        "(415) 555-0199",
        "GB82WEST12345698765432",
        "10.1.2.3",
        "2001:db8::1",
        "https://exämple.com/päth?q=1",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        'password = "hunter2x"',
        "postgres://u:pässwörd@db.example.com/x",
        "jdbc:mysql://h/db?password=abc",
        "AKIAABCDEFGHIJKLMNOP",
    ]
)
NEIGHBOURS = st.text(
    alphabet=st.sampled_from([*" ?é日😀\u00a0\u200b-:/@.1aZ\n", "\ud800"]), max_size=12
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(NEIGHBOURS, VALUES), min_size=1, max_size=4), NEIGHBOURS)
def test_ascii_view_finds_what_utf8_finds(parts: list[tuple[str, str]], tail: str) -> None:
    text = "".join(a + b for a, b in parts) + tail
    for rules, matcher in MATCHERS:
        # rules with an ``extract`` are re-checked on the real text: compare the others
        exact = {i for i, r in enumerate(rules) if r.extract is None}
        got = {h for h in matcher.raw(text) if h[0] in exact}
        want = {h for h in reference_hits(rules, text) if h[0] in exact}
        assert got == want


def test_a_question_mark_keyword_is_not_matched_by_another_character() -> None:
    g = PIIGuard(
        PIIGuardrail(
            entities={},
            deny_lists=[DenyList(entity="Q", values=["how to?"], action=PIIAction.REDACT)],
        )
    )
    assert [(s.start, s.end) for s in g.spans("so how to? and how toé")] == [(3, 10)]


def test_unicode_rules_and_ascii_rules_report_character_offsets_together() -> None:
    g = PIIGuard(
        PIIGuardrail(
            entities={"EMAIL_ADDRESS": PIIAction.REDACT},
            custom_patterns=[
                CustomPattern(entity="WORD", regex=r"\bñandú\b", action=PIIAction.REDACT)
            ],
            deny_lists=[DenyList(entity="CITY", values=["Zürich"], action=PIIAction.REDACT)],
        )
    )
    text = "😀日本 ñandú \U0001d4b3 zürich 😀 a@b.io \ud800 ÑANDÚ"
    assert [(s.entity, text[s.start : s.end]) for s in g.spans(text)] == [
        ("WORD", "ñandú"),
        ("CITY", "zürich"),
        ("EMAIL_ADDRESS", "a@b.io"),
    ]


def test_to_chars_maps_multibyte_offsets() -> None:
    text = "a😀é日b"
    data = text.encode()
    hits = [(0, data.index(b"b"), len(data)), (1, 0, 1), (2, 1, data.index(b"b"))]
    assert patterns._to_chars(data, hits) == [(0, 4, 5), (1, 0, 1), (2, 1, 4)]


# ---------------------------------------------------------------------------- result cache


def test_text_cache_keeps_recent_texts_and_passes_long_ones_through() -> None:
    calls: list[str] = []

    def detect(text: str) -> tuple[int, ...]:
        calls.append(text)
        return (len(text),)

    cache = patterns.TextCache(detect, size=2, max_chars=10)
    assert [cache("a"), cache("bb"), cache("a")] == [(1,), (2,), (1,)]
    assert calls == ["a", "bb"]
    cache("ccc")  # pushes out the least recently used: "bb"
    cache("bb")
    assert calls == ["a", "bb", "ccc", "bb"]
    cache("x" * 11)
    cache("x" * 11)
    assert calls[-2:] == ["x" * 11, "x" * 11]
    patterns.clear_caches()
    cache("a")
    assert calls[-1] == "a"


def test_repeated_text_gives_the_same_verdict_and_pseudonyms_stay_per_request() -> None:
    g = PIIGuard(PIIGuardrail(entities={"EMAIL_ADDRESS": PIIAction.REDACT}, pseudonymize=True))
    ctx = ScanContext(Direction.INPUT)
    first = g.check([Segment(0, "mail bob@example.org", Role.USER)], ctx)
    spans = g.spans("mail bob@example.org")
    spans.clear()  # callers get their own list
    second = g.check(
        [
            Segment(0, "mail alice@example.org", Role.SYSTEM),
            Segment(1, "mail bob@example.org", Role.USER),
        ],
        ctx,
    )
    assert first.edits == {0: "mail <EMAIL_ADDRESS_1>"}
    assert first.pseudonyms == {"<EMAIL_ADDRESS_1>": "bob@example.org"}
    assert second.edits == {0: "mail <EMAIL_ADDRESS_1>", 1: "mail <EMAIL_ADDRESS_2>"}
    assert second.pseudonyms == {
        "<EMAIL_ADDRESS_1>": "alice@example.org",
        "<EMAIL_ADDRESS_2>": "bob@example.org",
    }
    assert [(f.segment, f.start, f.end) for f in second.findings] == [(0, 5, 22), (1, 5, 20)]


def test_only_the_input_engine_keeps_detection_results() -> None:
    """Requests repeat (system prompt, history); responses and stream windows do not, so the
    output guardrails keep no texts in memory."""
    for cfg, kept in ((InputGuardrails(), True), (OutputGuardrails(), False)):
        chain = {g.name: g for g in build_engine(view_of(cfg)).guardrails}
        assert isinstance(chain["pii"]._cached_spans, patterns.TextCache) is kept  # type: ignore[attr-defined]
        assert isinstance(chain["secrets"]._cached_find, patterns.TextCache) is kept  # type: ignore[attr-defined]


def test_a_dropped_guardrail_is_freed_with_its_cache() -> None:
    """A policy reload drops the old guardrails: their databases and cached texts go at once,
    not whenever the cycle collector runs."""
    gc.disable()
    try:
        g = PIIGuard(PIIGuardrail())
        g.spans("mail bob@example.org")
        ref = weakref.ref(g)
        del g
        assert ref() is None
    finally:
        gc.enable()
