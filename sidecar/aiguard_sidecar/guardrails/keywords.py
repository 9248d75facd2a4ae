"""Deny topics: keywords (whole words, case-insensitive) and regexes, in one Hyperscan database.

    KeywordGuard(cfg).check(segments, ctx) -> Verdict

A keyword matches as a whole word at its word-character edges (``bomb`` does not fire on
``bombastic``; ``C++`` does fire in ``C++ code``), case-insensitively (Unicode-aware for
non-ASCII keywords); whitespace inside a phrase matches any whitespace run. Patterns are Python
``re`` syntax, compiled into the same Hyperscan database when Hyperscan accepts them (with
Python's semantics for the match extent), otherwise scanned with Python ``re``.

A keyword split across two adjacent segments (two messages, a message and a tool result) is
found too: the end of one and the start of the next are scanned together, and a match that
crosses the boundary counts (on the first segment, from the match to its end). Matches that
lie wholly inside a segment were found there; across the boundary only the text within
``ACROSS_CHARS`` of it is looked at.

Findings: type ``keyword`` or ``pattern`` (which keyword is not recorded: the finding carries
no content), the span, action ``block`` | ``flag`` | ``review``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from itertools import pairwise
from typing import Final

from aiguard_api.policy_types import DetectAction
from aiguard_api.view import KeywordGuardrail
from aiguard_sidecar.guardrails import patterns, textnorm
from aiguard_sidecar.guardrails.base import Decision, Finding, ScanContext, Segment, Verdict
from aiguard_sidecar.guardrails.patterns import Matcher, Rule

log = logging.getLogger(__name__)

NAME: Final = "deny"
# Characters on each side of a segment boundary scanned for a keyword split across it (at
# least the longest keyword; patterns are bounded by this too).
ACROSS_CHARS: Final = 256

DECISIONS: Final[dict[DetectAction, Decision]] = {
    DetectAction.BLOCK: Decision.BLOCK,
    DetectAction.REVIEW: Decision.REVIEW,
    DetectAction.FLAG: Decision.ALLOW,
}


class KeywordGuard:
    """The ``deny`` guardrail."""

    name = NAME
    cpu_heavy = False

    def __init__(self, cfg: KeywordGuardrail) -> None:
        self.cfg = cfg
        rules: list[Rule] = []
        fallback: list[int] = []
        for kw in dict.fromkeys(k.strip() for k in cfg.keywords if k.strip()):
            rules.append(
                patterns.literal_rule("keyword", kw, score=1.0, priority=50, tag="keyword")
            )
        checked = patterns.regex_rules(
            [("pattern", p) for p in cfg.patterns], score=1.0, priority=40, tag="pattern"
        )  # every pattern checked in one Hyperscan compile child
        for p, rule in zip(cfg.patterns, checked, strict=True):
            if rule is None:
                log.info("deny pattern: not for Hyperscan; Python re scans it")
                fallback.append(len(rules))
                rule = Rule("pattern", p, score=1.0, priority=40, tag="pattern")
            rules.append(rule)
        self._matcher = Matcher(rules, fallback=fallback)
        longest = max((len(k) for k in cfg.keywords), default=0)
        self._across = max(ACROSS_CHARS, longest)

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        verdict = Verdict()
        if self._matcher.empty:
            return verdict
        action = self.cfg.action
        for seg in segments:
            found = patterns.resolve_overlaps(self._matcher.find(seg.text))
            if not found:
                found = self._find_obfuscated(seg.text)
            for c in found:
                verdict.findings.append(
                    Finding(NAME, c.entity, seg.index, c.start, c.end, 1.0, action.value)
                )
            if found and DECISIONS[action] > verdict.decision:
                verdict.decision = DECISIONS[action]
                verdict.reason = f"{NAME}: {found[0].entity}"
        if not verdict.findings:
            for seg, c in self._find_across(segments):
                verdict.findings.append(
                    Finding(NAME, c.entity, seg.index, c.start, c.end, 1.0, action.value)
                )
                if DECISIONS[action] > verdict.decision:
                    verdict.decision = DECISIONS[action]
                    verdict.reason = f"{NAME}: {c.entity} (split across segments)"
        return verdict

    def _find_across(self, segments: Sequence[Segment]) -> list[tuple[Segment, patterns.Candidate]]:
        """Matches that cross the boundary between adjacent segments, each reported on the
        segment it starts in, from its start to that segment's end."""
        out: list[tuple[Segment, patterns.Candidate]] = []
        k = self._across
        for seg, nxt in pairwise(segments):
            if not seg.text or not nxt.text:
                continue
            head = seg.text[-k:]
            cut = len(head)
            for c in patterns.resolve_overlaps(self._matcher.find(head + nxt.text[:k])):
                if c.start < cut < c.end:
                    offset = len(seg.text) - cut
                    out.append(
                        (seg, dataclasses.replace(c, start=c.start + offset, end=len(seg.text)))
                    )
        return out

    def _find_obfuscated(self, text: str) -> list[patterns.Candidate]:
        """A keyword hidden by zero-width characters, homoglyphs, full-width forms or an
        encoded blob: match ``textnorm``'s normalised views (cached, shared with the other
        guardrails). Their offsets are not the text's, so the finding spans the segment."""
        for view in textnorm.normalize(text).all_texts():
            if view == text:
                continue
            hits = patterns.resolve_overlaps(self._matcher.find(view))
            if hits:
                return [dataclasses.replace(hits[0], start=0, end=len(text))]
        return []
