"""The one shape every guardrail has.

A guardrail sees text, never provider formats: the provider adapter turns a request or a
response into :class:`Segment` objects (each carrying a locator back into the JSON, which only
the adapter understands), and applies :class:`Verdict` edits back through those locators.

    guardrail.check(segments, ctx) -> Verdict
        findings:      what was found, where (segment index + character span), what to do
        edits:         replacement text per segment (redaction, masking, hashing)
        replacements:  optional, the same edits as spans (start, end, new text), so the
                       engine can map later findings back to the original text and an
                       adapter can rewrite streamed text without diffing
        pseudonyms:    optional, placeholder -> original value (reversible redaction); content,
                       so it lives only for the request and is never audited
        decision:      ALLOW | REDACT | REVIEW | BLOCK (the strongest of the findings' actions)

Guardrails are plug-ins: one module each, registered by name in ``registry.py``, built from the
compiled policy once per policy load (patterns compiled then, never per request).
Findings carry no content: a type, a span, a score, an action. Audit records counts only.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Role(enum.StrEnum):
    """Where a piece of text came from. Tool results and documents are untrusted input."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL_CALL = "tool_call"  # arguments the model asked a tool to run with
    TOOL_RESULT = "tool_result"  # what a tool returned: indirect injection lives here
    DOCUMENT = "document"  # retrieved or attached text
    OUTPUT = "output"  # text the provider generated


class Direction(enum.StrEnum):
    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of text in a request or response. ``index`` is its position in the exchange."""

    index: int
    text: str
    role: Role


class Decision(enum.IntEnum):
    """Ordered: the verdict of several findings is the maximum."""

    ALLOW = 0
    REDACT = 1  # allowed with edits
    REVIEW = 2  # hold for human approval
    BLOCK = 3


@dataclass(frozen=True, slots=True)
class Finding:
    guardrail: str  # "pii", "secrets", "prompt_injection", ...
    type: str  # "EMAIL_ADDRESS", "AWS_ACCESS_KEY", "jailbreak", "hate", ...
    segment: int  # Segment.index
    start: int  # character offsets into the segment's text; 0, 0 for whole-text findings
    end: int
    score: float
    action: str  # the policy action that applies: allow|redact|mask|hash|block|flag|review


@dataclass(frozen=True, slots=True)
class Replacement:
    """``text[start:end]`` of one segment becomes ``text``. Character offsets."""

    start: int
    end: int
    text: str


@dataclass(slots=True)
class Verdict:
    decision: Decision = Decision.ALLOW
    findings: list[Finding] = field(default_factory=list)
    edits: dict[int, str] = field(default_factory=dict)  # segment index -> new text
    reason: str = ""  # for a BLOCK/REVIEW: names the guardrail and type, never the content
    # segment index -> replacements, sorted, non-overlapping, in the coordinates of the text
    # the guardrail saw. Optional: a guardrail may give only ``edits``.
    replacements: dict[int, list[Replacement]] = field(default_factory=dict)
    # placeholder -> original value, for restoring pseudonymised values in a response.
    pseudonyms: dict[str, str] = field(default_factory=dict)

    def merge(self, other: Verdict) -> None:
        self.findings.extend(other.findings)
        self.edits.update(other.edits)
        for index, reps in other.replacements.items():
            self.replacements.setdefault(index, []).extend(reps)
        self.pseudonyms.update(other.pseudonyms)
        if other.decision > self.decision:
            self.decision = other.decision
            self.reason = other.reason


@dataclass(frozen=True, slots=True)
class ScanContext:
    direction: Direction
    model: str | None = None
    tools: frozenset[str] = frozenset()
    """Names of the tools the request declares or calls (the sidecar fills it only when a
    guardrail asks about tools: ``review``)."""


class Guardrail(Protocol):
    """A plug-in. ``check`` must be pure CPU work on the given text: no I/O, no sleeping."""

    name: str

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict: ...
