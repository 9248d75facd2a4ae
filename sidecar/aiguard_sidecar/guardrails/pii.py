"""Personal data: structured entities in one Hyperscan pass, optional NER, and the actions.

    PIIGuard(cfg, hash_key=..., ner=...)       built once per policy load
      .spans(text)  -> [PIISpan]               detection only (benchmarks, scan)
      .check(segments, ctx) -> Verdict         findings + edits + decision

Detection: every entity the policy lists that :data:`patterns.SUPPORTED_ENTITIES` knows, plus
the policy's custom patterns and deny-list values, are compiled into ONE Hyperscan database
(see :mod:`.patterns`); validators (Luhn, mod-97, SSN rules ...) and context words decide and
score; overlaps are resolved (longest, then priority). Candidates below ``scoreThreshold`` are
dropped before overlaps are resolved, so a weak reading never hides a strong one.

NER (only when ``ner.enabled``; :mod:`.ner` is imported then and only then): PERSON, LOCATION,
ORGANIZATION and any other policy entity Presidio knows. Structured findings win: an NER span
overlapping one is cut back to what remains (a PERSON span that swallowed the neighbouring
e-mail keeps the name, loses the e-mail). NER is CPU-heavy: ``cpu_heavy`` is then True and the
caller runs ``check`` off the event loop.

Actions (per entity; custom patterns and deny lists carry their own):

    allow   nothing changes; the finding is still recorded and counted
    redact  ``<EMAIL_ADDRESS>``; with ``pseudonymize: true`` a stable, reversible placeholder
            ``<EMAIL_ADDRESS_1>`` (same value → same placeholder within a request); the
            verdict's ``pseudonyms`` maps placeholders back and :func:`restore` puts the
            originals into the response the app receives
    mask    last 4 characters kept, the rest ``*``
    hash    ``<EMAIL_ADDRESS:3f2a9c1d>``: HMAC-SHA-256 with the policy's key over the
            normalised value (digits only for numbers, lower case for e-mail), first 8 hex
            digits: the same value correlates across requests without being revealed
    block   the request is refused; the value is still replaced in ``edits`` so no copy of
            the request that is logged or captured carries it
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiguard_api.policy_types import PIIAction
from aiguard_api.view import PIIGuardrail
from aiguard_sidecar.guardrails import patterns
from aiguard_sidecar.guardrails.base import (
    Decision,
    Finding,
    Replacement,
    ScanContext,
    Segment,
    Verdict,
)
from aiguard_sidecar.guardrails.patterns import Candidate, Matcher, Rule

if TYPE_CHECKING:
    from aiguard_sidecar.guardrails.ner import NerAnalyzer

log = logging.getLogger(__name__)

NAME: Final = "pii"
CUSTOM_SCORE: Final = 0.9
DENY_SCORE: Final = 1.0
_DIGIT_ENTITIES: Final = frozenset(
    {"CREDIT_CARD", "US_SSN", "US_ITIN", "PHONE_NUMBER", "UK_NHS", "IN_AADHAAR", "US_BANK_NUMBER"}
)


@dataclass(frozen=True, slots=True)
class PIISpan:
    entity: str
    start: int
    end: int
    score: float
    action: PIIAction
    source: str  # "pattern" | "custom" | "deny" | "ner"


def normalise(entity: str, value: str) -> str:
    """The form hashed and compared: formatting differences do not make a new value."""
    if entity in _DIGIT_ENTITIES:
        return "".join(c for c in value if c.isdigit())
    if entity == "IBAN_CODE":
        return value.replace(" ", "").upper()
    if entity in ("EMAIL_ADDRESS", "URL", "IP_ADDRESS", "MAC_ADDRESS"):
        return value.lower()
    return value


def mask(value: str, keep: int = 4) -> str:
    if len(value) <= keep:
        return "*" * len(value)
    return "*" * (len(value) - keep) + value[-keep:]


class Pseudonymizer:
    """Stable placeholders for one request: the same (normalised) value of an entity always
    gets the same ``<ENTITY_N>``; ``mapping`` turns placeholders back into originals."""

    def __init__(self) -> None:
        self.mapping: dict[str, str] = {}
        self._by_value: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, normalise(entity, value))
        found = self._by_value.get(key)
        if found is not None:
            return found
        n = self._counts.get(entity, 0) + 1
        self._counts[entity] = n
        ph = f"<{entity}_{n}>"
        self._by_value[key] = ph
        self.mapping[ph] = value
        return ph


_PLACEHOLDER: Final = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")
MAX_PLACEHOLDER: Final = 80  # longest placeholder StreamRestorer holds back


def restore(text: str, mapping: dict[str, str]) -> str:
    """Put pseudonymised values back: ``<EMAIL_ADDRESS_1>`` → the original address."""
    if not mapping or "<" not in text:
        return text
    return _PLACEHOLDER.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


def placeholders(text: str, mapping: Mapping[str, str]) -> list[tuple[int, int, str]]:
    """``(start, end, placeholder)`` of every placeholder of ``mapping`` in ``text``."""
    if not mapping or "<" not in text:
        return []
    return [
        (m.start(), m.end(), m.group(0))
        for m in _PLACEHOLDER.finditer(text)
        if m.group(0) in mapping
    ]


def entity_of(placeholder: str) -> str:
    """``<EMAIL_ADDRESS_1>`` → ``EMAIL_ADDRESS`` (for counts: never the value)."""
    return placeholder[1:-1].rsplit("_", 1)[0]


class StreamRestorer:
    """``restore`` for streamed text: a placeholder split across chunks is held back until it
    is complete (at most ``MAX_PLACEHOLDER`` characters). ``feed`` each chunk, then ``flush``."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self._mapping = mapping
        self._pending = ""

    def feed(self, chunk: str) -> str:
        text = self._pending + chunk
        self._pending = ""
        cut = text.rfind("<")
        if cut >= 0 and ">" not in text[cut:] and len(text) - cut < MAX_PLACEHOLDER:
            self._pending = text[cut:]
            text = text[:cut]
        return restore(text, self._mapping)

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return restore(text, self._mapping)


# --------------------------------------------------------------------------------------------


class PIIGuard:
    """The ``pii`` guardrail. See the module docstring."""

    name = NAME

    def __init__(
        self,
        cfg: PIIGuardrail,
        *,
        hash_key: bytes | None = None,
        ner: NerAnalyzer | None = None,
        cache: bool = True,
    ) -> None:
        self.cfg = cfg
        self.threshold = cfg.score_threshold
        rules: list[Rule] = []
        actions: list[PIIAction] = []
        fallback: list[int] = []
        for entity, action in cfg.entities.items():
            for rule in patterns.PII_RULES.get(entity, ()):
                rules.append(rule)
                actions.append(action)
        checked = patterns.regex_rules(
            [(cp.entity, cp.regex) for cp in cfg.custom_patterns],
            score=CUSTOM_SCORE,
            priority=90,
            tag="custom",
        )  # every pattern checked in one Hyperscan compile child
        for cp, custom in zip(cfg.custom_patterns, checked, strict=True):
            if custom is None:
                log.info("pii custom pattern %s: not for Hyperscan; Python re scans it", cp.entity)
                fallback.append(len(rules))
                custom = Rule(cp.entity, cp.regex, score=CUSTOM_SCORE, priority=90, tag="custom")
            rules.append(custom)
            actions.append(cp.action)
        for dl in cfg.deny_lists:
            for value in dict.fromkeys(x.strip() for x in dl.values if x.strip()):
                rules.append(
                    patterns.literal_rule(
                        dl.entity, value, score=DENY_SCORE, priority=95, tag="deny"
                    )
                )
                actions.append(dl.action)
        self._matcher = Matcher(rules, fallback=fallback)
        self._actions = actions
        self.unsupported: frozenset[str] = frozenset(cfg.entities) - patterns.SUPPORTED_ENTITIES
        self._ner = ner
        self.cpu_heavy = ner is not None
        if ner is None and self.unsupported:
            log.warning(
                "pii: entities %s need NER (spec.guardrails.*.pii.ner.enabled); not scanned",
                ", ".join(sorted(self.unsupported)),
            )
        # detection depends on the text alone: repeated texts (system prompts, the history a
        # chat client re-sends) are not scanned again. ``cache=False`` where texts do not
        # repeat (responses, stream windows).
        self._cached_spans: Callable[[str], tuple[PIISpan, ...]] = (
            patterns.TextCache(self._detect) if cache else self._detect
        )
        # ``quiet(text)``: True only when ``check`` certainly finds nothing in ``text``: not
        # one pattern matches it (one short Hyperscan call, :meth:`Matcher.any`); the engine
        # then skips the guardrail. Texts up to QUIET_MAX_CHARS, and only where pattern hits
        # are the only source of findings (no NER) and detection is not cached (a cached text
        # costs less than a second scan).
        # A closure over the matcher: no reference cycle through ``self``.
        self.quiet: Callable[[str], bool] | None = None
        if not cache and ner is None:
            matcher = self._matcher
            self.quiet = lambda text: (
                len(text) <= patterns.QUIET_MAX_CHARS and not matcher.any(text)
            )
        self._hash_key = hash_key
        if hash_key is None and PIIAction.HASH in {*cfg.entities.values(), *actions}:
            log.warning("pii: hash action without hashKeySecretRef; using a per-process key")
            self._hash_key = os.urandom(32)

    # ---------------------------------------------------------------------- detection

    def spans(self, text: str) -> list[PIISpan]:
        """Findings in ``text``: thresholded, overlaps resolved, NER merged; sorted by start."""
        return list(self._cached_spans(text))

    def _detect(self, text: str) -> tuple[PIISpan, ...]:
        found = self._matcher.find(text, self.threshold)
        cands = [c for c in found if c.score >= self.threshold]
        resolved = patterns.resolve_overlaps(cands) if cands else []
        out = [self._span(c) for c in resolved]
        if self._ner is not None and text.strip():
            out = merge_ner(out, self._ner.analyze(text), text, self._ner_action)
        return tuple(out)

    def _span(self, c: Candidate) -> PIISpan:
        tag = self._matcher.rules[c.rule].tag
        return PIISpan(c.entity, c.start, c.end, c.score, self._actions[c.rule], tag or "pattern")

    def _ner_action(self, entity: str) -> PIIAction:
        return self.cfg.entities.get(entity, self.cfg.ner.action)

    # ---------------------------------------------------------------------- actions

    def _replacement(self, span: PIISpan, value: str, pseudo: Pseudonymizer | None) -> str | None:
        action = span.action
        if action is PIIAction.ALLOW:
            return None
        if action is PIIAction.MASK:
            return mask(value)
        if action is PIIAction.HASH:
            assert self._hash_key is not None
            digest = hmac.new(
                self._hash_key,
                normalise(span.entity, value).encode("utf-8", "surrogatepass"),
                hashlib.sha256,
            ).hexdigest()
            return f"<{span.entity}:{digest[:8]}>"
        if action is PIIAction.REDACT and pseudo is not None:
            return pseudo.placeholder(span.entity, value)
        return f"<{span.entity}>"  # redact, block

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        verdict = Verdict()
        pseudo = Pseudonymizer() if self.cfg.pseudonymize else None
        for seg in segments:
            found = self._cached_spans(seg.text)
            if not found:
                continue
            reps: list[Replacement] = []
            for sp in found:
                verdict.findings.append(
                    Finding(
                        NAME,
                        sp.entity,
                        seg.index,
                        sp.start,
                        sp.end,
                        round(sp.score, 3),
                        sp.action.value,
                    )
                )
                new = self._replacement(sp, seg.text[sp.start : sp.end], pseudo)
                if new is not None:
                    reps.append(Replacement(sp.start, sp.end, new))
                decision = _DECISION[sp.action]
                if decision > verdict.decision:
                    verdict.decision = decision
                    verdict.reason = f"{NAME}: {sp.entity}"
            if reps:
                verdict.replacements[seg.index] = reps
                verdict.edits[seg.index] = patterns.apply_replacements(
                    seg.text, [(r.start, r.end, r.text) for r in reps]
                )
        if pseudo is not None:
            verdict.pseudonyms = pseudo.mapping
        return verdict


_DECISION: Final[dict[PIIAction, Decision]] = {
    PIIAction.ALLOW: Decision.ALLOW,
    PIIAction.REDACT: Decision.REDACT,
    PIIAction.MASK: Decision.REDACT,
    PIIAction.HASH: Decision.REDACT,
    PIIAction.BLOCK: Decision.BLOCK,
}

# ----------------------------------------------------------------------------------------------
# NER merge

# spaCy's small model tags these acronyms as ORGANIZATION; they are words about PII, not PII.
NER_STOPWORDS: Final = frozenset(
    {"ssn", "iban", "ip", "pii", "api", "url", "id", "cvv", "pin", "dob", "vat", "tin", "nhs",
     "ipv4", "ipv6", "mac", "gdpr", "hipaa", "email", "e-mail", "phone", "swift", "bic", "otp"}
)  # fmt: skip
_TRIM: Final = " \t\r\n.,;:!?()[]{}<>\"'`-/\\|"


@dataclass(frozen=True, slots=True)
class NerSpan:
    entity: str
    start: int
    end: int
    score: float


def merge_ner(
    structured: list[PIISpan],
    ner_spans: Sequence[NerSpan],
    text: str,
    action_of: Callable[[str], PIIAction],
) -> list[PIISpan]:
    """Structured spans win; NER spans are cut back to what does not overlap them."""
    blocked = sorted((s.start, s.end) for s in structured)
    pieces: list[Candidate] = []
    for ns in ner_spans:
        for start, end in _subtract(ns.start, ns.end, blocked):
            while start < end and text[start] in _TRIM:
                start += 1
            while end > start and text[end - 1] in _TRIM:
                end -= 1
            value = text[start:end]
            if sum(c.isalnum() for c in value) < 2 or value.lower() in NER_STOPWORDS:
                continue
            pieces.append(Candidate(ns.entity, start, end, ns.score, 0, -1))
    merged = structured + [
        PIISpan(c.entity, c.start, c.end, c.score, action_of(c.entity), "ner")
        for c in patterns.resolve_overlaps(pieces)
    ]
    merged.sort(key=lambda s: s.start)
    return merged


def _subtract(start: int, end: int, blocked: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pos = start
    for b0, b1 in blocked:
        if b1 <= pos or b0 >= end:
            continue
        if b0 > pos:
            out.append((pos, b0))
        pos = max(pos, b1)
    if pos < end:
        out.append((pos, end))
    return out
