"""Redacted content capture (``spec.audit.contentCapture: redacted``).

What a capture holds: the text that crossed the sidecar — the request's segments as they were
sent upstream (after the policy's own redactions) and the response's as the client received
them — with every PII entity and secret aiguard recognises replaced by its type
(``<EMAIL_ADDRESS>``, ``<AWS_ACCESS_KEY>``), whatever the policy's guardrail actions were
(an entity the policy lets through to the provider is still masked in the capture).
A request that was refused before anything went upstream captures nothing, and a response
the client did not receive (blocked, failed) is left out: the findings' counts in the event
are the evidence of those.

Shape (canonical JSON, hashed into the event as ``aiguard.capture.hash``)::

    {"input": [[role, text], ...] | null, "output": [[role, text], ...] | null,
     "masked": {"EMAIL_ADDRESS": 2, ...}}

The masking runs on the spool's writer thread (:func:`aiguard_sidecar.audit.events.seal`),
never on the event loop, with one pattern pass per segment (the same Hyperscan/RE2 engine the
guardrails use, built once). NER is not used here: the capture masks what the fast patterns
find; a policy that needs names removed too keeps ``contentCapture: none``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from aiguard_api.policy_types import FailureMode, PIIAction, SecretsAction
from aiguard_api.view import DEFAULT_INPUT_GUARDRAILS
from aiguard_sidecar.guardrails import patterns
from aiguard_sidecar.guardrails.base import Direction, Role, ScanContext, Segment
from aiguard_sidecar.guardrails.engine import ERROR, Engine, build_engine

Segments = Sequence[tuple[str, str]]

_lock = threading.Lock()
_engine: Engine | None = None


def _masker() -> Engine:
    """One engine for every capture: all entities and secrets redacted, nothing else."""
    global _engine
    with _lock:
        if _engine is None:
            base = DEFAULT_INPUT_GUARDRAILS  # the defaults (aiguard_api.view) but for these
            side = replace(
                base,
                pii=replace(
                    base.pii,
                    entities=dict.fromkeys(sorted(patterns.SUPPORTED_ENTITIES), PIIAction.REDACT),
                ),
                secrets=replace(base.secrets, action=SecretsAction.REDACT),
                prompt_injection=replace(base.prompt_injection, enabled=False),
                moderation=replace(base.moderation, enabled=False),
            )
            _engine = build_engine(side, failure_mode=FailureMode.CLOSED)
        return _engine


def _role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        return Role.USER


def mask(segments: Segments, masked: Counter[str]) -> list[list[str]]:
    """``segments`` with every finding replaced by its type; counts what it masked."""
    engine = _masker()
    ctx = ScanContext(direction=Direction.INPUT)
    items = [Segment(i, text, _role(role)) for i, (role, text) in enumerate(segments)]
    verdict = engine.check(items, ctx)
    for f in verdict.findings:
        if f.action == "redact":
            masked[f.type] += 1
    # A guardrail that failed (an error finding) may have left text unmasked: keep none.
    failed = any(f.type == ERROR for f in verdict.findings)
    return [
        [role, "" if failed else verdict.edits.get(i, text)]
        for i, (role, text) in enumerate(segments)
    ]


def build(inputs: Segments | None, outputs: Segments | None) -> dict[str, Any]:
    """The capture of one request (see the module docstring)."""
    masked: Counter[str] = Counter()
    return {
        "input": mask(inputs, masked) if inputs is not None else None,
        "output": mask(outputs, masked) if outputs is not None else None,
        "masked": dict(sorted(masked.items())),
    }
