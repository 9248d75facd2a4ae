"""The PII guardrail: what it finds (tables in the style of Presidio's recognizer tests), where
(character offsets, also after emoji and accents), overlaps, every action, pseudonymisation,
custom patterns and deny lists, and properties that must hold for any input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiguard_api.policy import CustomPattern, DenyList, PIIAction, PIIGuardrail
from aiguard_sidecar.guardrails import patterns
from aiguard_sidecar.guardrails.base import Decision, Direction, Role, ScanContext, Segment
from aiguard_sidecar.guardrails.pii import (
    NerSpan,
    PIIGuard,
    PIISpan,
    StreamRestorer,
    merge_ner,
    restore,
)

ALL = {e: PIIAction.REDACT for e in patterns.SUPPORTED_ENTITIES}
CTX = ScanContext(Direction.INPUT)


def guard(entities: dict[str, PIIAction] | None = None, **kw: Any) -> PIIGuard:
    return PIIGuard(PIIGuardrail(entities=entities or dict(ALL), **kw))


GUARD = guard()


def found(text: str, g: PIIGuard = GUARD) -> list[tuple[str, str]]:
    return [(s.entity, text[s.start : s.end]) for s in g.spans(text)]


def check(g: PIIGuard, *texts: str) -> tuple[Decision, list[str], dict[str, str]]:
    v = g.check([Segment(i, t, Role.USER) for i, t in enumerate(texts)], CTX)
    edited = [v.edits.get(i, t) for i, t in enumerate(texts)]
    return v.decision, edited, v.pseudonyms


# ---------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("john.doe@example.com", ["john.doe@example.com"]),
        ("Mail: a+b@sub.example.co.uk.", ["a+b@sub.example.co.uk"]),
        ("two: x@y.org, z.w@q.io", ["x@y.org", "z.w@q.io"]),
        ("<mailto:Jane_Roe-1@Example.ORG>", ["Jane_Roe-1@Example.ORG"]),
    ],
)
def test_when_all_emails_then_all_found(text: str, expected: list[str]) -> None:
    assert [v for e, v in found(text) if e == "EMAIL_ADDRESS"] == expected


@pytest.mark.parametrize(
    "text",
    ["john@localhost", "@example.com", "john@example", "user@.com", "not an email at all"],
)
def test_when_not_an_email_then_none_found(text: str) -> None:
    assert [v for e, v in found(text) if e == "EMAIL_ADDRESS"] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Call me at +1-202-555-0143.", ["+1-202-555-0143"]),
        ("(202) 555-0143", ["(202) 555-0143"]),
        ("Phone: 0490 75 40 81", ["0490 75 40 81"]),
        ("Mobile: +46 (0)8 928 571 38", ["+46 (0)8 928 571 38"]),
        ("Desk: 345-899-3560x4587", ["345-899-3560x4587"]),
        ("fax 9498777106", ["9498777106"]),
        ("+447700 921 916 mobile", ["+447700 921 916"]),
    ],
)
def test_when_all_phones_then_all_found(text: str, expected: list[str]) -> None:
    assert [v for e, v in found(text) if e == "PHONE_NUMBER"] == expected


@pytest.mark.parametrize(
    "text",
    [
        "Released on 2021-04-16 at 14:30",  # a date
        "Order 1234567890 shipped",  # a bare number without phone context
        "It costs $200-1000 depending on size",  # money
        "The answer is 11614.72",  # a decimal
        "Version 1.2.3.4 is out",
        "I live at 3536 1659 Hoog St",  # a street number
    ],
)
def test_when_not_a_phone_then_none_found(text: str) -> None:
    assert [v for e, v in found(text) if e == "PHONE_NUMBER"] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 expires", ["4111 1111 1111 1111"]),
        ("4111-1111-1111-1111", ["4111-1111-1111-1111"]),
        ("amex 378282246310005", ["378282246310005"]),
        ("pay with 5555555555554444.", ["5555555555554444"]),
    ],
)
def test_when_all_cards_then_all_found(text: str, expected: list[str]) -> None:
    assert [v for e, v in found(text) if e == "CREDIT_CARD"] == expected


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "value 17.615676569620100000 units",  # a decimal that happens to pass Luhn
        "1234567812345670",  # Luhn-valid, no issuer
    ],
)
def test_when_not_a_card_then_none_found(text: str) -> None:
    assert [v for e, v in found(text) if e == "CREDIT_CARD"] == []


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN_CODE", "GB82 WEST 1234 5698 7654 32"),
        ("my iban is gb82west12345698765432", "IBAN_CODE", "gb82west12345698765432"),
        ("SSN: 536-22-1234", "US_SSN", "536-22-1234"),
        ("social security number 536221234", "US_SSN", "536221234"),
        ("ITIN 912-70-1234", "US_ITIN", "912-70-1234"),
        ("from 192.168.10.1 today", "IP_ADDRESS", "192.168.10.1"),
        ("host 2001:db8::8a2e:370:7334 down", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
        ("see https://example.com/a?b=c).", "URL", "https://example.com/a?b=c"),
        ("NHS number 943 476 5919", "UK_NHS", "943 476 5919"),
        ("NINO AB123456C", "UK_NINO", "AB123456C"),
        ("codice RSSMRA85T10A562S", "IT_FISCAL_CODE", "RSSMRA85T10A562S"),
        ("btc 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "CRYPTO", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"),
        ("mac 00:1A:2B:3C:4D:5E", "MAC_ADDRESS", "00:1A:2B:3C:4D:5E"),
        ("bank account 12345678901", "US_BANK_NUMBER", "12345678901"),
        ("passport number 123456789", "US_PASSPORT", "123456789"),
    ],
)
def test_when_entity_present_then_found(text: str, entity: str, value: str) -> None:
    assert (entity, value) in found(text)


@pytest.mark.parametrize(
    "text",
    [
        "536-22-1234",  # an SSN shape without the word: still found (score 0.6)
    ],
)
def test_dashed_ssn_found_without_context(text: str) -> None:
    assert found(text) == [("US_SSN", "536-22-1234")]


def test_context_words_raise_weak_candidates_over_the_threshold() -> None:
    assert found("536221234") == []  # a bare 9-digit number is not an SSN
    assert found("my ssn is 536221234") == [("US_SSN", "536221234")]
    assert found("ref 0490 75 40 81") == []
    assert found("phone 0490 75 40 81") == [("PHONE_NUMBER", "0490 75 40 81")]


# ---------------------------------------------------------------------------- overlaps


def test_a_card_inside_an_iban_is_not_a_card() -> None:
    text = "transfer to GB82 WEST 1234 5698 7654 32"
    assert found(text) == [("IBAN_CODE", "GB82 WEST 1234 5698 7654 32")]


def test_an_ssn_is_not_also_a_phone() -> None:
    assert found("call about ssn 536-22-1234") == [("US_SSN", "536-22-1234")]


def test_an_email_inside_a_url_is_part_of_the_url() -> None:
    text = "https://example.com/?to=bob@example.org"
    assert found(text) == [("URL", text)]


def test_resolve_overlaps_prefers_longest_then_priority() -> None:
    c = patterns.Candidate
    cands = [
        c("A", 0, 10, 0.9, 10, 0),
        c("B", 2, 5, 1.0, 99, 1),  # inside A: dropped although higher priority
        c("C", 10, 14, 0.5, 1, 2),  # adjacent: kept
        c("D", 10, 14, 0.5, 5, 3),  # same span as C, higher priority: wins
        c("E", 12, 20, 0.9, 1, 4),  # overlaps D, shorter than... longer: 8 > 4
    ]
    kept = patterns.resolve_overlaps(cands)
    assert [(x.entity, x.start, x.end) for x in kept] == [("A", 0, 10), ("E", 12, 20)]


def test_ner_spans_lose_to_structured_ones() -> None:
    text = "John Smith john.smith@acme.com"
    structured = [PIISpan("EMAIL_ADDRESS", 11, 30, 0.95, PIIAction.REDACT, "pattern")]
    swallowed = [NerSpan("PERSON", 0, 30, 0.85)]  # PERSON swallowed the e-mail
    merged = merge_ner(structured, swallowed, text, lambda e: PIIAction.REDACT)
    assert [(s.entity, text[s.start : s.end]) for s in merged] == [
        ("PERSON", "John Smith"),
        ("EMAIL_ADDRESS", "john.smith@acme.com"),
    ]


def test_ner_acronyms_are_not_organizations() -> None:
    text = "What is an SSN?"
    merged = merge_ner(
        [], [NerSpan("ORGANIZATION", 11, 14, 0.85)], text, lambda e: PIIAction.REDACT
    )
    assert merged == []


# ---------------------------------------------------------------------------- offsets


@pytest.mark.parametrize("prefix", ["", "é", "😀", "Ünïcødé 😀 ", "日本語のテキスト", "\u200b"])
def test_offsets_are_characters_not_bytes(prefix: str) -> None:
    text = prefix + "mail bob@example.org or 536-22-1234 " + prefix + " 4111111111111111"
    spans = GUARD.spans(text)
    assert [text[s.start : s.end] for s in spans] == [
        "bob@example.org",
        "536-22-1234",
        "4111111111111111",
    ]


def test_lone_surrogates_do_not_break_offsets() -> None:
    text = "\ud800 x bob@example.org"
    assert found(text) == [("EMAIL_ADDRESS", "bob@example.org")]


# ---------------------------------------------------------------------------- actions

EMAIL = "bob@example.org"
CARD = "4111 1111 1111 1111"


@pytest.mark.parametrize(
    ("action", "decision", "expected"),
    [
        (PIIAction.ALLOW, Decision.ALLOW, f"to {EMAIL}"),
        (PIIAction.REDACT, Decision.REDACT, "to <EMAIL_ADDRESS>"),
        (PIIAction.MASK, Decision.REDACT, "to ***********.org"),
        (PIIAction.BLOCK, Decision.BLOCK, "to <EMAIL_ADDRESS>"),
    ],
)
def test_every_action(action: PIIAction, decision: Decision, expected: str) -> None:
    d, edited, _ = check(guard({"EMAIL_ADDRESS": action}), f"to {EMAIL}")
    assert d is decision
    assert edited == [expected]


def test_allow_still_records_the_finding() -> None:
    v = guard({"EMAIL_ADDRESS": PIIAction.ALLOW}).check([Segment(0, EMAIL, Role.USER)], CTX)
    assert [(f.type, f.action) for f in v.findings] == [("EMAIL_ADDRESS", "allow")]
    assert v.edits == {}


def test_hash_is_keyed_stable_and_normalised() -> None:
    g = PIIGuard(PIIGuardrail(entities={"EMAIL_ADDRESS": PIIAction.HASH}), hash_key=b"k1")
    _, (a, b), _ = check(g, f"to {EMAIL}", "to BOB@example.org")
    assert a == b
    assert a.startswith("to <EMAIL_ADDRESS:")
    assert len(a) == len("to <EMAIL_ADDRESS:12345678>")
    other = PIIGuard(PIIGuardrail(entities={"EMAIL_ADDRESS": PIIAction.HASH}), hash_key=b"k2")
    _, (c,), _ = check(other, f"to {EMAIL}")
    assert c != a


def test_block_decision_names_the_entity_not_the_value() -> None:
    v = guard({"CREDIT_CARD": PIIAction.BLOCK}).check([Segment(0, CARD, Role.USER)], CTX)
    assert v.decision is Decision.BLOCK
    assert v.reason == "pii: CREDIT_CARD"
    assert "4111" not in repr(v.findings)


def test_mask_keeps_the_last_four() -> None:
    _, edited, _ = check(guard({"CREDIT_CARD": PIIAction.MASK}), CARD)
    assert edited == ["*" * (len(CARD) - 4) + "1111"]


def test_findings_and_replacements_agree() -> None:
    text = f"a {EMAIL} b 536-22-1234 c"
    v = guard({"EMAIL_ADDRESS": PIIAction.REDACT, "US_SSN": PIIAction.MASK}).check(
        [Segment(3, text, Role.USER)], CTX
    )
    reps = v.replacements[3]
    assert [(r.start, r.end) for r in reps] == [(f.start, f.end) for f in v.findings]
    assert patterns.apply_replacements(text, [(r.start, r.end, r.text) for r in reps]) == v.edits[3]


# ---------------------------------------------------------------------------- pseudonyms


def test_pseudonymise_and_restore_round_trip() -> None:
    g = guard(
        {"EMAIL_ADDRESS": PIIAction.REDACT, "PHONE_NUMBER": PIIAction.REDACT}, pseudonymize=True
    )
    texts = [
        "write to bob@example.org and alice@example.org",
        "again BOB@example.org, or call +1-202-555-0143",
    ]
    d, edited, mapping = check(g, *texts)
    assert d is Decision.REDACT
    assert edited == [
        "write to <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_2>",
        "again <EMAIL_ADDRESS_1>, or call <PHONE_NUMBER_1>",
    ]
    answer = "Sure: I mailed <EMAIL_ADDRESS_2> and will call <PHONE_NUMBER_1>. <UNKNOWN_9> stays."
    assert restore(answer, mapping) == (
        "Sure: I mailed alice@example.org and will call +1-202-555-0143. <UNKNOWN_9> stays."
    )


def test_restore_streams_across_chunk_boundaries() -> None:
    mapping = {"<EMAIL_ADDRESS_1>": "bob@example.org"}
    r = StreamRestorer(mapping)
    chunks = ["Hello <EMAIL_", "ADDRESS_1", "> and <", "b> done"]
    out = "".join(r.feed(c) for c in chunks) + r.flush()
    assert out == "Hello bob@example.org and <b> done"


# ---------------------------------------------------------------------------- policy patterns


def test_custom_patterns_and_deny_lists_join_the_same_pass() -> None:
    g = PIIGuard(
        PIIGuardrail(
            entities={"EMAIL_ADDRESS": PIIAction.REDACT},
            custom_patterns=[
                CustomPattern(entity="EMPLOYEE_ID", regex=r"\bEMP-\d{6}\b", action=PIIAction.MASK),
                CustomPattern(entity="TICKET", regex=r"(?<=#)T\d+", action=PIIAction.REDACT),
            ],
            deny_lists=[
                DenyList(
                    entity="PROJECT", values=["Blue Falcon", "Ünïcorn"], action=PIIAction.BLOCK
                )
            ],
        )
    )
    text = "EMP-123456 on blue   falcon and ÜNÏCORN, not bluefalcon; #T42; x@y.io"
    assert found(text, g) == [
        ("EMPLOYEE_ID", "EMP-123456"),
        ("PROJECT", "blue   falcon"),
        ("PROJECT", "ÜNÏCORN"),
        ("TICKET", "T42"),  # lookbehind: Python re fallback
        ("EMAIL_ADDRESS", "x@y.io"),
    ]
    d, edited, _ = check(g, text)
    assert d is Decision.BLOCK
    assert edited[0].startswith("******3456 on <PROJECT>")


def test_entities_not_listed_are_not_scanned() -> None:
    g = guard({"EMAIL_ADDRESS": PIIAction.REDACT})
    assert found("536-22-1234 and 4111 1111 1111 1111", g) == []


def test_unknown_entities_are_reported_as_unsupported_without_ner() -> None:
    g = guard({"EMAIL_ADDRESS": PIIAction.REDACT, "PERSON": PIIAction.REDACT})
    assert g.unsupported == {"PERSON"}


def test_nothing_found_is_cheap_and_empty() -> None:
    v = GUARD.check([Segment(0, "hello world " * 200, Role.USER)], CTX)
    assert v.decision is Decision.ALLOW
    assert not v.findings
    assert not v.edits


# ---------------------------------------------------------------------------- properties

REDACT_ALL = guard({e: PIIAction.REDACT for e in patterns.SUPPORTED_ENTITIES})
PSEUDO = guard(pseudonymize=True)
PII_VALUES = st.sampled_from(
    [EMAIL, CARD, "536-22-1234", "+1-202-555-0143", "GB82WEST12345698765432", "10.1.2.3"]
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text())
def test_any_unicode_scans_without_error_and_spans_stay_in_bounds(text: str) -> None:
    for s in GUARD.spans(text):
        assert 0 <= s.start < s.end <= len(text)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40),
    PII_VALUES,
    st.text(max_size=40),
)
def test_redaction_never_leaves_the_value(before: str, value: str, after: str) -> None:
    text = f"{before} {value} {after}"
    _, (edited,), _ = check(REDACT_ALL, text)
    assert value not in edited


@settings(max_examples=100, deadline=None)
@given(st.lists(PII_VALUES, min_size=1, max_size=5), st.text(max_size=20))
def test_pseudonyms_always_restore_the_original(values: list[str], sep: str) -> None:
    text = (" " + sep.replace("<", "") + " ").join(values)
    _, (edited,), mapping = check(PSEUDO, text)
    assert restore(edited, mapping).replace(" ", "") == text.replace(" ", "")


# ---------------------------------------------- NER (opt-in; `make setup` installs it)


def test_ner_finds_names_and_keeps_structured_findings() -> None:
    from aiguard_api.policy import NER
    from aiguard_sidecar.guardrails import registry

    g = registry.REGISTRY["pii"](
        PIIGuardrail(ner=NER(enabled=True)), registry.BuildContext(direction=Direction.INPUT)
    )
    assert g is not None
    assert getattr(g, "cpu_heavy", False)
    text = "Please email John Smith at john.smith@acme.com about the SSN form."
    assert isinstance(g, PIIGuard)
    spans = found(text, g)
    assert ("EMAIL_ADDRESS", "john.smith@acme.com") in spans
    assert ("PERSON", "John Smith") in spans
    assert all(v != "SSN" for _, v in spans)
