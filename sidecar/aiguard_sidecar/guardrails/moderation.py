"""Content moderation: hate, harassment, violence, self-harm, sexual, illicit.

One linear model with six heads (``models/moderation.json``) plus small hand-written lexicons
(stored in the same file, source ``hack/data/moderation_lexicons.json``). Per segment::

    text ─► textnorm.normalize (shared with the injection guardrail, computed once)
         ─► z[c] = max over text and decoded views of head c's logit
                   + lexicon boost[c] - offset[c]
         ─► score[c] = sigmoid(z[c]); a finding for every category the policy lists whose
            score ≥ cfg.threshold, with that category's action (block | flag | review)

``offset[c]`` is set by the training script so that 0.5 is head c's F1-optimal threshold under
cross-validation on the training split. What each category was trained on, and how the
corpora's labels map onto ours, is documented in ``benchmarks/_guardrail_data.py``.

Every role is scanned except ``system`` (the application owner's text, which often lists the
very topics it forbids). Whether moderation runs on input, output or both is the policy's
choice (``input.moderation`` / ``output.moderation``); the guardrail does not look at
``ctx.direction``. Findings carry the category, segment and score, never the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiguard_api import policy_types as policy
from aiguard_api import view
from aiguard_sidecar.guardrails import linear, textnorm
from aiguard_sidecar.guardrails.base import Decision, Finding, Role, ScanContext, Segment, Verdict

__all__ = ["CATEGORIES", "Lexicons", "ModerationGuardrail", "score_text"]

MODEL_NAME: Final = "moderation"
CATEGORIES: Final = tuple(c.value for c in policy.ModerationCategory)
SKIPPED_ROLES: Final = frozenset({Role.SYSTEM})

_DECISION: Final[dict[policy.DetectAction, Decision]] = {
    policy.DetectAction.BLOCK: Decision.BLOCK,
    policy.DetectAction.REVIEW: Decision.REVIEW,
    policy.DetectAction.FLAG: Decision.ALLOW,
}


@dataclass(frozen=True, slots=True)
class Lexicons:
    """Phrase patterns per category, each group with a logit boost; one Hyperscan pass."""

    regexes: textnorm.RegexSet
    owner: tuple[tuple[str, int, float], ...]  # per pattern: (category, group, boost)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Lexicons:
        patterns: list[str] = []
        owner: list[tuple[str, int, float]] = []
        for cat, groups in doc.items():
            if cat.startswith("_"):
                continue
            if cat not in CATEGORIES:
                raise linear.ModelError(f"lexicon for unknown category {cat!r}")
            for g, group in enumerate(groups):
                boost = float(group["boost"])
                for p in group["patterns"]:
                    patterns.append(str(p))
                    owner.append((cat, g, boost))
        return cls(textnorm.RegexSet(patterns), tuple(owner))

    def boosts(self, norm: textnorm.Normalized) -> dict[str, float]:
        """Boost per category: the sum over the groups with at least one pattern present."""
        hits: set[int] = set()
        for t in norm.all_texts():
            hits |= self.regexes.matches(t)
        groups = {(self.owner[i][0], self.owner[i][1]): self.owner[i][2] for i in hits}
        out: dict[str, float] = {}
        for (cat, _), boost in groups.items():
            out[cat] = out.get(cat, 0.0) + boost
        return out


@dataclass(frozen=True, slots=True)
class _Loaded:
    model: linear.LinearModel
    lexicons: Lexicons
    offsets: tuple[float, ...]
    head_of: Mapping[str, int]


_loaded: _Loaded | None = None


def _load() -> _Loaded:
    global _loaded
    if _loaded is None:
        m = linear.load(MODEL_NAME)
        if set(m.heads) != set(CATEGORIES):
            raise linear.ModelError(f"moderation model heads {m.heads} != {CATEGORIES}")
        offsets = tuple(float(x) for x in m.extra.get("offset", [0.0] * len(m.heads)))
        lex = Lexicons.from_json(m.extra.get("lexicons", {}))
        _loaded = _Loaded(m, lex, offsets, {h: i for i, h in enumerate(m.heads)})
    return _loaded


def score_text(text: str, *, use_lexicons: bool = True) -> dict[str, float]:
    """Score per category (0..1) for one text."""
    ld = _load()
    norm = textnorm.normalize(text)
    z = ld.model.logits_of(norm)
    boosts = ld.lexicons.boosts(norm) if use_lexicons else {}
    return {
        head: linear.sigmoid(z[i] + boosts.get(head, 0.0) - ld.offsets[i])
        for i, head in enumerate(ld.model.heads)
    }


class ModerationGuardrail:
    """The ``moderation`` guardrail (see the module docstring)."""

    name = "moderation"

    def __init__(self, cfg: view.ModerationGuardrail) -> None:
        self.cfg = cfg
        _load()  # read the model and compile the lexicons now, not on the first request
        self._actions = {c.value: a for c, a in cfg.categories.items()}

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        verdict = Verdict()
        if not self.cfg.enabled or not self._actions:
            return verdict
        for seg in segments:
            if seg.role in SKIPPED_ROLES or not seg.text or seg.text.isspace():
                continue
            scores = score_text(seg.text)
            for cat, action in self._actions.items():
                s = scores[cat]
                if s < self.cfg.threshold:
                    continue
                verdict.findings.append(
                    Finding(
                        guardrail=self.name,
                        type=cat,
                        segment=seg.index,
                        start=0,
                        end=0,
                        score=round(s, 4),
                        action=action.value,
                    )
                )
                decision = _DECISION[action]
                if decision > verdict.decision:
                    verdict.decision = decision
                    verdict.reason = f"{self.name}: {cat} in segment {seg.index}"
        return verdict
