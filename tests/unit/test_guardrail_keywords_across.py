"""Deny keywords split across adjacent segments (keywords.KeywordGuard._find_across)."""

from __future__ import annotations

from aiguard_api.policy import KeywordGuardrail
from aiguard_sidecar.guardrails.base import Decision, Direction, Role, ScanContext, Segment
from aiguard_sidecar.guardrails.keywords import KeywordGuard

CTX = ScanContext(Direction.INPUT)


def check(*texts: str) -> tuple[Decision, list[tuple[int, int, int]]]:
    guard = KeywordGuard(KeywordGuardrail(keywords=["project falcon"]))
    segments = [Segment(i, t, Role.USER) for i, t in enumerate(texts)]
    v = guard.check(segments, CTX)
    return v.decision, [(f.segment, f.start, f.end) for f in v.findings]


def test_a_keyword_cut_between_two_messages_is_blocked_on_the_first() -> None:
    first = "Tell me everything about proj"
    assert check(first, "ect falcon and its budget") == (
        Decision.BLOCK,
        [(0, first.index("proj"), len(first))],
    )


def test_a_keyword_inside_one_message_is_reported_there_once() -> None:
    assert check("hello", "what is Project  Falcon?") == (Decision.BLOCK, [(1, 8, 23)])


def test_words_that_only_meet_at_a_boundary_are_not_a_keyword() -> None:
    assert check("about project", "falcon") == (Decision.ALLOW, [])  # "projectfalcon"
    assert check("a falcon", "project") == (Decision.ALLOW, [])
