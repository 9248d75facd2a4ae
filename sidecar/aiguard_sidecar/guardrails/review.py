"""The ``review`` guardrail: which requests a person must approve before they go upstream.

    ReviewGuard(cfg).check(segments, ctx) -> Verdict      # cfg: policy.ReviewGuardrail

A request is held for review (decision REVIEW, action ``review``) when any of these match:

    models     the requested model (``ctx.model``) matches a glob (``gpt-4o*``, ``o1``)
    tools      a tool the request declares or calls (``ctx.tools``, read off the body by the
               sidecar: OpenAI ``tools``/``functions``/``tool_calls``, Responses
               ``function_call`` items, Anthropic ``tool_use`` blocks) matches a glob
    keywords   a keyword occurs in any input text, whole words, case-insensitive (the same
               matching as the ``deny`` guardrail: ``wire`` does not fire on ``wireless``)

Findings: type ``model`` and ``tool`` (request-level: segment -1, span 0, 0) and ``keyword``
(with its span). None of them carries content: which keyword matched is not recorded.
Holding the request and asking a person is not this module's business: it only decides
(``aiguard_sidecar.review`` does the rest), so ``kubectl-aiguard scan`` reports the same
decision the sidecar takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from aiguard_api.policy_types import model_matches
from aiguard_api.view import ReviewGuardrail
from aiguard_sidecar.guardrails import patterns
from aiguard_sidecar.guardrails.base import Decision, Finding, ScanContext, Segment, Verdict
from aiguard_sidecar.guardrails.patterns import Matcher, Rule

NAME: Final = "review"
ACTION: Final = "review"


class ReviewGuard:
    """The ``review`` guardrail (input only)."""

    name = NAME
    cpu_heavy = False

    def __init__(self, cfg: ReviewGuardrail) -> None:
        self.cfg = cfg
        self.models: tuple[str, ...] = tuple(cfg.models)
        self.tools: tuple[str, ...] = tuple(cfg.tools)
        words = dict.fromkeys(k.strip() for k in cfg.keywords if k.strip())
        rules: list[Rule] = [
            patterns.literal_rule("keyword", kw, score=1.0, priority=50, tag="review")
            for kw in words
        ]
        self._matcher = Matcher(rules)

    def matched_tools(self, tools: frozenset[str]) -> list[str]:
        """The request's tools that need review, sorted."""
        return sorted(t for t in tools if any(model_matches(p, t) for p in self.tools))

    def model_matches(self, model: str | None) -> bool:
        return bool(model) and any(model_matches(p, model or "") for p in self.models)

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        verdict = Verdict()
        reasons: list[str] = []
        if self.model_matches(ctx.model):
            verdict.findings.append(Finding(NAME, "model", -1, 0, 0, 1.0, ACTION))
            reasons.append("model")
        tools = self.matched_tools(ctx.tools) if self.tools and ctx.tools else []
        for _ in tools:
            verdict.findings.append(Finding(NAME, "tool", -1, 0, 0, 1.0, ACTION))
        if tools:
            reasons.append("tool")
        if not self._matcher.empty:
            hit = False
            for seg in segments:
                for c in patterns.resolve_overlaps(self._matcher.find(seg.text)):
                    verdict.findings.append(
                        Finding(NAME, "keyword", seg.index, c.start, c.end, 1.0, ACTION)
                    )
                    hit = True
            if hit:
                reasons.append("keyword")
        if reasons:
            verdict.decision = Decision.REVIEW
            verdict.reason = f"{NAME}: {', '.join(reasons)}"
        return verdict


def build(cfg: ReviewGuardrail, ctx: object) -> ReviewGuard | None:
    """The registry's factory: None when the policy does not turn review on, or names
    nothing to match (an enabled review without models, tools or keywords holds nothing)."""
    if not cfg.enabled or not (cfg.models or cfg.tools or any(k.strip() for k in cfg.keywords)):
        return None
    return ReviewGuard(cfg)
