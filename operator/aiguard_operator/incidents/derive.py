"""Security events derived from audit events, and their aggregation into incidents: pure.

An audit event (the parsed JSON the collector stores, :mod:`aiguard_api.audit`) yields at most
one security *signal* per :class:`Kind`:

=========================  ===========================================================  ========
kind                       the audit event                                              severity
=========================  ===========================================================  ========
``prompt-injection``       a ``prompt_injection`` finding with action ``block``          high
                           (types ``injection``, ``jailbreak``, ``prompt_extraction``)
``secret-exfiltration``    a ``secrets`` finding in the input that was blocked or        high
                           redacted (``block``, ``redact``, ``mask``, ``hash``), or any
                           ``secrets`` finding in the output
``harmful-output``         a ``moderation`` finding in the output with action ``block``  high
``access-denied``          outcome ``access_denied`` or ``identity_failed``; an          medium
                           incident only from :data:`ACCESS_DENIALS_THRESHOLD` per
                           window and pod
``model-drift``            the optional ``aiguard.model.drift`` field is set (the        low
                           served model or fingerprint of a route changed)
``audit-delivery-failure`` not from one event: a gap in a sidecar's hash chain at the    critical
                           collector (:func:`gap_signal`)
=========================  ===========================================================  ========

Signals aggregate per (namespace, policy, pod, kind) and fixed window: windows are aligned to
the Unix epoch in multiples of the policy's ``spec.incidents.windowSeconds`` and placed by the
audit event's own ``time``, so the same events always land in the same window whichever
collector process sees them, in whatever order, however often. An incident's ``count`` is the
number of audit events (requests) in its window that carry the signal: one blocked request with
two injection findings counts once. Its name is a digest of the key and the window start
(:func:`incident_name`): a restart or a re-delivery finds the same object.

Nothing derived here carries content: reasons name guardrails, finding types, actions and
counts, never text or hashes of text.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from aiguard_api import audit
from aiguard_api.policy import SEVERITY_ORDER, Severity


class Kind(StrEnum):
    PROMPT_INJECTION = "prompt-injection"
    SECRET_EXFILTRATION = "secret-exfiltration"  # noqa: S105 - a name, not a secret
    HARMFUL_OUTPUT = "harmful-output"
    ACCESS_DENIED = "access-denied"
    MODEL_DRIFT = "model-drift"
    AUDIT_DELIVERY = "audit-delivery-failure"


@dataclass(frozen=True, slots=True)
class KindInfo:
    severity: Severity
    guardrail: str
    """``spec.guardrail`` of its incidents: what fired."""
    event_reason: str
    """``reason`` of the Kubernetes Events about its incidents."""
    title: str
    """What one occurrence is, for messages: "blocked prompt-injection attempt"."""


KINDS: Final[dict[Kind, KindInfo]] = {
    Kind.PROMPT_INJECTION: KindInfo(
        Severity.HIGH, "prompt_injection", "PromptInjectionBlocked", "prompt-injection attempt"
    ),
    Kind.SECRET_EXFILTRATION: KindInfo(
        Severity.HIGH, "secrets", "SecretExfiltrationAttempt", "secret exfiltration attempt"
    ),
    Kind.HARMFUL_OUTPUT: KindInfo(
        Severity.HIGH, "moderation", "HarmfulOutputBlocked", "harmful output blocked"
    ),
    Kind.ACCESS_DENIED: KindInfo(
        Severity.MEDIUM, "access", "RepeatedAccessDenials", "access denial"
    ),
    Kind.MODEL_DRIFT: KindInfo(Severity.LOW, "model-drift", "ModelDrift", "model drift"),
    Kind.AUDIT_DELIVERY: KindInfo(
        Severity.CRITICAL, "audit", "AuditDeliveryFailure", "audit event missing"
    ),
}

ACCESS_DENIALS_THRESHOLD: Final = 5
"""Denials of one pod in one window from which an ``access-denied`` incident is raised."""
DENIAL_OUTCOMES: Final = frozenset({"access_denied", "identity_failed"})
DRIFT_FIELD: Final = "aiguard.model.drift"
FINDINGS: Final = "aiguard.findings"
OUTCOME: Final = "aiguard.outcome"
MODE: Final = "aiguard.mode"
_INPUT_SECRET_ACTIONS: Final = frozenset({"block", "redact", "mask", "hash"})


@dataclass(frozen=True, slots=True)
class Signal:
    """One audit event's contribution to one kind of incident."""

    kind: Kind
    details: tuple[str, ...] = ()
    """Finding types (``jailbreak``, ``AWS_ACCESS_KEY``…) or outcomes, never content."""
    enforced: bool = True
    """False when the policy ran in mode ``audit``: detected, recorded, not blocked."""


def _findings(event: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = event.get(FINDINGS)
    return [f for f in raw if isinstance(f, Mapping)] if isinstance(raw, list) else []


def _types(findings: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    return tuple(sorted({str(f.get("type") or "unknown") for f in findings}))


def drift_of(event: Mapping[str, Any]) -> bool:
    """Whether the event reports model drift. Read tolerantly: the field is optional and
    newer than v1's first writers. The sidecar writes ``{previous_model,
    previous_fingerprint}`` when the served model or fingerprint changed and ``null``
    otherwise; a non-empty object, ``true`` or a non-empty string count as drift, ``false``,
    ``null``, ``{}``, absence and anything else do not."""
    value = event.get(DRIFT_FIELD)
    if isinstance(value, Mapping):
        flag = value.get("drift", value.get("detected"))
        return bool(flag) if flag is not None else bool(value)
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and bool(value.strip())


def signals(event: Mapping[str, Any]) -> list[Signal]:
    """The security signals one audit event carries (at most one per kind)."""
    out: list[Signal] = []
    enforced = event.get(MODE, "enforce") != "audit"
    findings = _findings(event)

    injection = [
        f
        for f in findings
        if f.get("guardrail") == "prompt_injection" and f.get("action") == "block"
    ]
    if injection:
        out.append(Signal(Kind.PROMPT_INJECTION, _types(injection), enforced))

    secrets = [
        f
        for f in findings
        if f.get("guardrail") == "secrets"
        and (
            f.get("direction") == "output"
            or (f.get("direction") == "input" and f.get("action") in _INPUT_SECRET_ACTIONS)
        )
    ]
    if secrets:
        out.append(Signal(Kind.SECRET_EXFILTRATION, _types(secrets), enforced))

    harmful = [
        f
        for f in findings
        if f.get("guardrail") == "moderation"
        and f.get("direction") == "output"
        and f.get("action") == "block"
    ]
    if harmful:
        out.append(Signal(Kind.HARMFUL_OUTPUT, _types(harmful), enforced))

    outcome = event.get(OUTCOME)
    if outcome in DENIAL_OUTCOMES:
        out.append(Signal(Kind.ACCESS_DENIED, (str(outcome),), enforced))

    if drift_of(event):
        out.append(Signal(Kind.MODEL_DRIFT, (), enforced))
    return out


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True, slots=True, order=True)
class Key:
    """What one incident aggregates: a pod's signals of one kind in one window."""

    namespace: str
    policy: str
    pod: str
    kind: Kind
    window_start: int
    """Unix seconds, a multiple of ``window_seconds``."""
    window_seconds: int


def window_start(ts: float, window_seconds: int) -> int:
    return int(ts // window_seconds) * window_seconds


def key_of(event: Mapping[str, Any], kind: Kind, window_seconds: int) -> Key:
    return Key(
        namespace=str(event.get(audit.NAMESPACE, "")),
        policy=str(event.get(audit.POLICY_NAME, "")),
        pod=str(event.get(audit.POD, "")),
        kind=kind,
        window_start=window_start(audit.parse_time(str(event[audit.TIME])), window_seconds),
        window_seconds=window_seconds,
    )


def incident_name(key: Key) -> str:
    """``<kind>-<16 hex digits>``: a digest of the key, stable across processes."""
    material = "\x00".join(
        (key.namespace, key.policy, key.pod, key.kind.value, str(key.window_start))
    )
    return f"{key.kind.value}-{hashlib.sha256(material.encode()).hexdigest()[:16]}"


@dataclass(slots=True)
class Aggregate:
    """The signals of one :class:`Key` so far."""

    key: Key
    count: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    details: Counter[str] = field(default_factory=Counter)
    unenforced: int = 0
    """Of ``count``, how many were detected in mode ``audit`` (not blocked)."""

    def add(self, ts: float, signal: Signal) -> None:
        if self.count == 0 or ts < self.first_seen:
            self.first_seen = ts
        if self.count == 0 or ts > self.last_seen:
            self.last_seen = ts
        self.count += 1
        self.details.update(signal.details)
        if not signal.enforced:
            self.unenforced += 1


def aggregate(
    events: Iterable[Mapping[str, Any]], window_seconds: Mapping[tuple[str, str], int] | int
) -> dict[Key, Aggregate]:
    """Group the signals of ``events`` by key. ``window_seconds``: one for all, or per
    (namespace, policy) (policies without an entry use the default 300)."""
    out: dict[Key, Aggregate] = {}
    for event in events:
        found = signals(event)
        if not found:
            continue
        ns, policy = str(event.get(audit.NAMESPACE, "")), str(event.get(audit.POLICY_NAME, ""))
        window = (
            window_seconds
            if isinstance(window_seconds, int)
            else window_seconds.get((ns, policy), DEFAULT_WINDOW)
        )
        ts = audit.parse_time(str(event[audit.TIME]))
        for signal in found:
            key = key_of(event, signal.kind, window)
            agg = out.get(key)
            if agg is None:
                agg = out[key] = Aggregate(key)
            agg.add(ts, signal)
    return out


DEFAULT_WINDOW: Final = 300


def severity_at_least(severity: Severity, threshold: Severity) -> bool:
    return SEVERITY_ORDER[severity] >= SEVERITY_ORDER[threshold]


def qualifies(
    agg: Aggregate,
    threshold: Severity,
    *,
    denials_threshold: int = ACCESS_DENIALS_THRESHOLD,
) -> bool:
    """Whether an aggregate becomes an AIIncident: its severity reaches the policy's
    ``severityThreshold``, and access denials reach ``denials_threshold`` in the window."""
    if agg.count == 0 or not severity_at_least(KINDS[agg.key.kind].severity, threshold):
        return False
    return agg.key.kind is not Kind.ACCESS_DENIED or agg.count >= denials_threshold


def reason(agg: Aggregate) -> str:
    """One line for ``spec.reason``: what, how often, where. No content."""
    info = KINDS[agg.key.kind]
    plural = "" if agg.count == 1 else "s"
    detail = ", ".join(f"{name} x{n}" for name, n in sorted(agg.details.items()))
    text = f"{agg.count} {info.title}{plural} from pod {agg.key.pod}"
    if agg.key.kind is Kind.ACCESS_DENIED:
        text = f"{agg.count} access denial{plural} of pod {agg.key.pod}"
    elif agg.key.kind is Kind.MODEL_DRIFT:
        text = (
            f"the served model or its fingerprint changed in {agg.count} request{plural} "
            f"of pod {agg.key.pod}"
        )
    elif agg.key.kind is Kind.AUDIT_DELIVERY:
        text = f"{agg.count} audit event{plural} of pod {agg.key.pod} never reached the collector"
    if detail:
        text += f" ({detail})"
    text += f" under AIPolicy {agg.key.policy}, window of {agg.key.window_seconds}s"
    if agg.unenforced:
        text += f"; {agg.unenforced} in mode audit (detected, not blocked)"
    return text[:1024]


# --------------------------------------------------------------------------- chain gaps


def chain_missing(*, stored: int, head: int, start: int | None) -> int:
    """How many events are missing from a stored chain: ``stored`` events, ``head`` the highest
    sequence received, ``start`` where the chain legitimately begins (after a purge; else 1)."""
    begin = start if start is not None else 1
    return max(0, head - begin + 1 - stored)


def gap_holes(sequences: Iterable[int], *, start: int, head: int) -> list[tuple[int, int]]:
    """The missing ranges ``[(first, last), ...]`` of a chain from its stored sequences."""
    holes: list[tuple[int, int]] = []
    expected = start
    for seq in sorted(set(sequences)):
        if seq < start:
            continue
        if seq > expected:
            holes.append((expected, seq - 1))
        expected = seq + 1
    if expected <= head:
        holes.append((expected, head))
    return holes
