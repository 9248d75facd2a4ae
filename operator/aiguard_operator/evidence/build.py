"""Audit events + cluster objects → the evidence report (pure: no I/O, no clock).

Every number in the bundle is computed here, from the inputs collected for the period, so a
test can feed hand-built events and check exact figures. Every control's status comes with
the sentence of the rule that decided it; the rules are the ``_cc*``/``_a1*``/… functions
below, one per criterion, each short enough to read next to its output.

Statuses: ``pass`` (the rule's condition holds, with evidence), ``attention`` (evidence shows
something an auditor will ask about), ``no-data`` (nothing in scope to judge by).

Sample-free by construction: from an audit event only metadata is read (identities, model and
provider names, counts, hashes, decision stages/rules, TLS parameters, times); decision
``reason`` texts are not copied (they name guardrails and types, but the bundle does not need
them), and events carry no content to begin with.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import pydantic

from aiguard_api import audit, policy

Status = Literal["pass", "attention", "no-data"]
PASS: Final = "pass"  # noqa: S105 - a status, not a password
ATTENTION: Final = "attention"
NO_DATA: Final = "no-data"

# Finding actions that remove or replace the detected text before it leaves the pod.
REDACTING: Final = frozenset({"redact", "mask", "hash"})
# Verbs that change an AIPolicy.
CHANGE_VERBS: Final = ("create", "update", "patch", "delete", "deletecollection")
# Incident states in which someone has acted on the incident.
HANDLED_STATES: Final = frozenset({"acknowledged", "resolved", "approved", "denied"})
SECURITY_GUARDRAILS: Final = frozenset({"prompt_injection", "secrets", "moderation"})


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Provenance:
    """Where the evidence came from and when it was made (stated in the bundle)."""

    period_from: str
    period_to: str
    generated_at: str
    generator: str
    generator_version: str
    cluster_server: str
    cluster_version: str
    collector_url: str
    namespace: str | None
    """The namespace the evidence covers; None: every namespace."""


@dataclass
class Sources:
    """What :mod:`.collect` gathered: API objects as the API server returns them, audit
    events, chain infos (with ``verification``) and purge records as the collector does."""

    events: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    """ClusterRoles and Roles (``kind`` set on each)."""
    bindings: list[dict[str, Any]] = field(default_factory=list)
    """ClusterRoleBindings and RoleBindings (``kind`` set on each)."""
    chains: list[dict[str, Any]] = field(default_factory=list)
    purges: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What could not be collected (a resource not installed, or not readable)."""


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Control:
    id: str
    title: str
    status: Status
    rule: str
    """The rule that decided the status, as a sentence."""
    evidence: list[str]
    """What the status rests on, in words with numbers; each names a section of the bundle."""
    figures: dict[str, int]


@dataclass(frozen=True)
class Grant:
    """Who may: one access rule of one policy."""

    namespace: str
    policy: str
    rule: str
    users: list[str]
    groups: list[str]
    service_accounts: list[str]
    all_authenticated: bool
    models: list[str]
    operations: list[str]


@dataclass(frozen=True)
class Usage:
    """Who did: one subject's requests for one model in the period."""

    subject_kind: str  # user | workload
    subject: str
    groups: str
    namespace: str
    model: str
    allowed: int
    denied: int


@dataclass(frozen=True)
class Editor:
    """Who can change AIPolicies: one subject of one binding of a role that grants it."""

    subject_kind: str
    subject: str
    binding_kind: str
    binding: str
    role_kind: str
    role: str
    scope: str  # "cluster" or the namespace
    verbs: list[str]


@dataclass(frozen=True)
class Flow:
    """Workload → sidecar (policy) → provider/model, with volumes."""

    namespace: str
    workload: str
    policy: str
    provider: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    redactions: int
    blocked: int


@dataclass(frozen=True)
class Violation:
    """One guardrail finding type in one event (no content)."""

    time: str
    event_id: str
    instance: str
    sequence: int
    namespace: str
    user: str
    direction: str
    guardrail: str
    type: str
    action: str
    count: int
    enforced: bool
    outcome: str
    status: int


@dataclass(frozen=True)
class ChainRow:
    instance: str
    events_in_period: int
    stored_events: int
    head_sequence: int
    start_sequence: int | None
    verified: bool
    problems: list[str]


@dataclass(frozen=True)
class IncidentRow:
    namespace: str
    name: str
    severity: str
    policy: str
    pod: str
    guardrail: str
    count: int
    first_seen: str
    last_seen: str
    state: str
    approval: str
    """'' or: requested | approved by X | denied by X | expired."""
    changes: int


@dataclass(frozen=True)
class PurgeRow:
    id: str
    time: str
    namespace: str
    policy: str
    rule: str
    cutoff: str
    count: int
    oldest: str
    newest: str
    chains: int


@dataclass(frozen=True)
class PolicyRow:
    namespace: str
    name: str
    mode: str
    generation: int
    observed_generation: int
    ready: str
    compiled_hash: str
    created: str
    retention_days: int
    content_capture: str
    hashes_in_events: list[str]
    governed_pods: int
    injected_pods: int
    uninjected_pods: list[str]


@dataclass(frozen=True)
class Count:
    """A labelled count (TLS parameters, PII types, outcomes, rate-limit rules, …)."""

    labels: dict[str, str]
    count: int


@dataclass(frozen=True)
class Report:
    provenance: Provenance
    totals: dict[str, int]
    controls: list[Control]
    outcomes: list[Count]
    decisions: list[Count]
    grants: list[Grant]
    usage: list[Usage]
    editors: list[Editor]
    flows: list[Flow]
    guardrail_log: list[Violation]
    chains: list[ChainRow]
    chain_ok: bool
    incidents: list[IncidentRow]
    purges: list[PurgeRow]
    policies: list[PolicyRow]
    tls: list[Count]
    pii: list[Count]
    rate_limits: list[Count]
    failovers: list[Count]
    notes: list[str]


# --------------------------------------------------------------------------- helpers


def _g(event: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = event.get(key)
    return default if value is None else value


def _findings(event: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [f for f in event.get("aiguard.findings") or () if isinstance(f, dict)]


def _decisions(event: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [d for d in event.get("aiguard.decisions") or () if isinstance(d, dict)]


def _attempts(event: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [a for a in event.get("aiguard.failover.path") or () if isinstance(a, dict)]


def reached_provider(event: Mapping[str, Any]) -> bool:
    """A provider answered one of the event's attempts (data left the cluster)."""
    return any(a.get("outcome") == "ok" for a in _attempts(event))


def denied(event: Mapping[str, Any]) -> bool:
    """An enforced decision refused the request or its response."""
    return any(not d.get("allowed", True) and d.get("enforced", True) for d in _decisions(event))


def failed_over(event: Mapping[str, Any]) -> bool:
    """More than one upstream attempt: the first one failed."""
    return len(_attempts(event)) > 1


def subject_of(event: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, name): the verified user, else the workload's ServiceAccount."""
    user = event.get("user.id")
    if user:
        return "user", str(user)
    ns = _g(event, audit.NAMESPACE, "")
    return "workload", f"{ns}/{_g(event, audit.SERVICE_ACCOUNT, '')}"


def _flow_model(event: Mapping[str, Any]) -> str:
    return str(
        _g(event, "gen_ai.response.model")
        or _g(event, "aiguard.target.model")
        or _g(event, "gen_ai.request.model", "-")
    )


def _counts(counter: Mapping[tuple[str, ...], int], names: Sequence[str]) -> list[Count]:
    return [
        Count(dict(zip(names, key, strict=True)), n)
        for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _parse_policy(obj: Mapping[str, Any]) -> policy.AIPolicySpec | None:
    try:
        return policy.AIPolicySpec.model_validate(obj.get("spec") or {})
    except pydantic.ValidationError:
        return None


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _key(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def in_period(obj_first: str, obj_last: str, start: str, end: str) -> bool:
    """An interval [first, last] overlaps the period [start, end)."""
    try:
        first, last = audit.parse_time(obj_first), audit.parse_time(obj_last)
        return first < audit.parse_time(end) and last >= audit.parse_time(start)
    except ValueError:
        return True  # unparseable times: include rather than hide


# --------------------------------------------------------------------------- sections


def grants(policies: Iterable[Mapping[str, Any]]) -> list[Grant]:
    out: list[Grant] = []
    for obj in policies:
        spec = _parse_policy(obj)
        if spec is None:
            continue
        meta = _meta(obj)
        for r in spec.access.rules:
            out.append(
                Grant(
                    namespace=str(meta.get("namespace", "")),
                    policy=str(meta.get("name", "")),
                    rule=r.name,
                    users=list(r.subjects.users),
                    groups=list(r.subjects.groups),
                    service_accounts=list(r.subjects.service_accounts),
                    all_authenticated=r.subjects.all_authenticated,
                    models=list(r.models),
                    operations=[o.value for o in r.operations],
                )
            )
    return out


def usage(events: Iterable[Mapping[str, Any]]) -> list[Usage]:
    allowed: Counter[tuple[str, str, str, str, str]] = Counter()
    refused: Counter[tuple[str, str, str, str, str]] = Counter()
    for e in events:
        kind, name = subject_of(e)
        groups = ",".join(sorted(str(g) for g in _g(e, "aiguard.user.groups", [])))
        key = (kind, name, groups, str(_g(e, audit.NAMESPACE, "")), _requested(e))
        (refused if denied(e) else allowed)[key] += 1
    keys = sorted(set(allowed) | set(refused))
    return [Usage(*k, allowed=allowed[k], denied=refused[k]) for k in keys]


def _requested(event: Mapping[str, Any]) -> str:
    return str(_g(event, "gen_ai.request.model", "-"))


def _grants_change(rule: Mapping[str, Any]) -> list[str]:
    """The AIPolicy-changing verbs one RBAC rule grants ([] when none)."""
    groups = rule.get("apiGroups") or []
    resources = rule.get("resources") or []
    verbs = [str(v) for v in rule.get("verbs") or []]
    if not ("aiguard.dev" in groups or "*" in groups):
        return []
    if not ("aipolicies" in resources or "*" in resources):
        return []
    if "*" in verbs:
        return list(CHANGE_VERBS)
    return [v for v in CHANGE_VERBS if v in verbs]


def editors(
    roles: Iterable[Mapping[str, Any]], bindings: Iterable[Mapping[str, Any]]
) -> list[Editor]:
    """Every subject bound to a role that may create, update, patch or delete AIPolicies."""
    granting: dict[tuple[str, str, str], list[str]] = {}
    for role in roles:
        verbs: set[str] = set()
        for rule in role.get("rules") or []:
            verbs.update(_grants_change(rule))
        if verbs:
            kind = str(role.get("kind", "ClusterRole"))
            ns = str(_meta(role).get("namespace", "")) if kind == "Role" else ""
            granting[(kind, ns, str(_meta(role).get("name", "")))] = sorted(
                verbs, key=CHANGE_VERBS.index
            )
    out: list[Editor] = []
    for b in bindings:
        bkind = str(b.get("kind", "ClusterRoleBinding"))
        bns = str(_meta(b).get("namespace", "")) if bkind == "RoleBinding" else ""
        ref = b.get("roleRef") or {}
        rkind = str(ref.get("kind", ""))
        verbs_of = granting.get((rkind, bns if rkind == "Role" else "", str(ref.get("name", ""))))
        if not verbs_of:
            continue
        for s in b.get("subjects") or []:
            skind = str(s.get("kind", ""))
            name = str(s.get("name", ""))
            if skind == "ServiceAccount":
                name = f"{s.get('namespace') or bns}/{name}"
            out.append(
                Editor(
                    subject_kind=skind,
                    subject=name,
                    binding_kind=bkind,
                    binding=f"{bns}/{_meta(b).get('name', '')}" if bns else str(_meta(b)["name"]),
                    role_kind=rkind,
                    role=str(ref.get("name", "")),
                    scope=bns or "cluster",
                    verbs=verbs_of,
                )
            )
    out.sort(key=lambda e: (e.scope != "cluster", e.scope, e.subject_kind, e.subject, e.role))
    return out


def flows(events: Iterable[Mapping[str, Any]]) -> list[Flow]:
    acc: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for e in events:
        attempts = _attempts(e)
        ok = [a for a in attempts if a.get("outcome") == "ok"]
        provider = str(ok[-1].get("provider")) if ok else "(not sent)"
        model = _flow_model(e) if ok else _requested(e)
        key = (
            str(_g(e, audit.NAMESPACE, "")),
            str(_g(e, audit.SERVICE_ACCOUNT, "")),
            str(_g(e, audit.POLICY_NAME, "")),
            provider,
            model,
        )
        row = acc[key]
        row[0] += 1
        row[1] += int(_g(e, "gen_ai.usage.input_tokens", 0))
        row[2] += int(_g(e, "gen_ai.usage.output_tokens", 0))
        row[3] += sum(int(f.get("count", 0)) for f in _findings(e) if f.get("action") in REDACTING)
        row[4] += 1 if denied(e) else 0
    return [
        Flow(
            *k, requests=v[0], input_tokens=v[1], output_tokens=v[2], redactions=v[3], blocked=v[4]
        )
        for k, v in sorted(acc.items())
    ]


def guardrail_log(events: Iterable[Mapping[str, Any]]) -> list[Violation]:
    """Every finding (type) in every event, in time order: what fired, what was done."""
    out: list[Violation] = []
    for e in events:
        enforced = str(_g(e, "aiguard.mode", "enforce")) == "enforce"
        kind, name = subject_of(e)
        for f in _findings(e):
            out.append(
                Violation(
                    time=str(e.get(audit.TIME, "")),
                    event_id=str(e.get(audit.ID, "")),
                    instance=str(e.get(audit.INSTANCE, "")),
                    sequence=int(e.get(audit.SEQUENCE, 0)),
                    namespace=str(_g(e, audit.NAMESPACE, "")),
                    user=name if kind == "user" else f"(workload {name})",
                    direction=str(f.get("direction", "")),
                    guardrail=str(f.get("guardrail", "")),
                    type=str(f.get("type", "")),
                    action=str(f.get("action", "")),
                    count=int(f.get("count", 0)),
                    enforced=enforced,
                    outcome=str(_g(e, "aiguard.outcome", "")),
                    status=int(_g(e, "http.response.status_code", 0)),
                )
            )
    out.sort(key=lambda v: (v.time, v.instance, v.sequence))
    return out


def chain_rows(
    chains: Iterable[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
) -> list[ChainRow]:
    """Per sidecar chain with events in the period: the collector's verification of the
    whole stored chain, plus a recomputation of each period event's own hash here."""
    per: Counter[str] = Counter(str(e.get(audit.INSTANCE, "")) for e in events)
    edited: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if e.get(audit.HASH) != audit.event_hash(e):
            edited[str(e.get(audit.INSTANCE))].append(
                f"edited: #{e.get(audit.SEQUENCE)} id {e.get(audit.ID)}: content does not match "
                "its hash"
            )
    infos = {str(c.get("instance")): c for c in chains}
    out: list[ChainRow] = []
    for inst in sorted(per):
        info = infos.get(inst)
        if info is None:
            out.append(
                ChainRow(inst, per[inst], 0, 0, None, False, ["not verified by the collector"])
            )
            continue
        ver = info.get("verification") or {}
        problems = [
            f"{p.get('kind')}: #{p.get('sequence')} id {p.get('id')}: {p.get('message')}"
            for p in ver.get("problems") or []
        ]
        if int(info.get("conflicts") or 0):
            problems.append(f"conflict: {info['conflicts']} events claimed an occupied sequence")
        problems += edited.get(inst, [])
        start = info.get("start") or None
        out.append(
            ChainRow(
                instance=inst,
                events_in_period=per[inst],
                stored_events=int(info.get("events") or 0),
                head_sequence=int((info.get("head") or {}).get("sequence") or 0),
                start_sequence=int(start["sequence"]) if start else None,
                verified=bool(ver.get("ok")) and not problems,
                problems=problems,
            )
        )
    return out


def _approval(spec: Mapping[str, Any], state: str) -> str:
    a = spec.get("approval")
    if not isinstance(a, Mapping):
        return ""
    who = a.get("decidedBy")
    if state == "approved":
        return f"approved by {who or '?'}"
    if state == "denied":
        return f"denied by {who or '?'}" if who else "denied (expired undecided)"
    return "requested"


def incident_rows(
    incidents: Iterable[Mapping[str, Any]], start: str, end: str
) -> list[IncidentRow]:
    out: list[IncidentRow] = []
    for obj in incidents:
        spec = obj.get("spec") or {}
        first, last = str(spec.get("firstSeen", "")), str(spec.get("lastSeen", ""))
        if first and last and not in_period(first, last, start, end):
            continue
        state = str(spec.get("state", "open"))
        meta = _meta(obj)
        history = (obj.get("status") or {}).get("history") or []
        out.append(
            IncidentRow(
                namespace=str(meta.get("namespace", "")),
                name=str(meta.get("name", "")),
                severity=str(spec.get("severity", "")),
                policy=str(spec.get("policy", "")),
                pod=str(spec.get("pod") or ""),
                guardrail=str(spec.get("guardrail", "")),
                count=int(spec.get("count") or 1),
                first_seen=first,
                last_seen=last,
                state=state,
                approval=_approval(spec, state),
                changes=len(history),
            )
        )
    out.sort(key=lambda r: (r.first_seen, r.namespace, r.name))
    return out


def purge_rows(purges: Iterable[Mapping[str, Any]]) -> list[PurgeRow]:
    return sorted(
        (
            PurgeRow(
                id=str(p.get("id", "")),
                time=str(p.get("time", "")),
                namespace=str(p.get("namespace", "")),
                policy=str(p.get("policy", "")),
                rule=str(p.get("rule", "")),
                cutoff=str(p.get("cutoff", "")),
                count=int(p.get("count") or 0),
                oldest=str(p.get("oldest") or ""),
                newest=str(p.get("newest") or ""),
                chains=len(p.get("chains") or []),
            )
            for p in purges
        ),
        key=lambda r: (r.time, r.id),
    )


def policy_rows(
    policies: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]]
) -> list[PolicyRow]:
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in sorted(events, key=lambda e: str(e.get(audit.TIME, ""))):
        key = (str(_g(e, audit.NAMESPACE, "")), str(_g(e, audit.POLICY_NAME, "")))
        h = str(_g(e, "aiguard.policy.hash", ""))
        if h and h not in seen[key]:
            seen[key].append(h)
    out: list[PolicyRow] = []
    for obj in policies:
        meta, st = _meta(obj), obj.get("status") or {}
        spec = _parse_policy(obj)
        conditions: list[dict[str, Any]] = st.get("conditions") or []
        ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), "Unknown")
        cov = st.get("coverage") or {}
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        out.append(
            PolicyRow(
                namespace=ns,
                name=name,
                mode=spec.mode.value if spec else str((obj.get("spec") or {}).get("mode", "?")),
                generation=int(meta.get("generation") or 0),
                observed_generation=int(st.get("observedGeneration") or 0),
                ready=str(ready),
                compiled_hash=str(st.get("compiledHash") or ""),
                created=str(meta.get("creationTimestamp", "")),
                retention_days=spec.audit.retention_days if spec else 0,
                content_capture=spec.audit.content_capture.value if spec else "?",
                hashes_in_events=seen.get((ns, name), []),
                governed_pods=int(cov.get("governedPods") or 0),
                injected_pods=int(cov.get("injectedPods") or 0),
                uninjected_pods=sorted(str(p) for p in cov.get("uninjectedPods") or []),
            )
        )
    out.sort(key=lambda r: (r.namespace, r.name))
    return out


# --------------------------------------------------------------------------- the controls


@dataclass
class _Facts:
    """What the control rules read: the inputs, parsed once."""

    events: list[dict[str, Any]]
    specs: dict[str, policy.AIPolicySpec]
    unparsed: list[str]
    policies: list[PolicyRow]
    incidents: list[IncidentRow]
    chains: list[ChainRow]
    purges: list[PurgeRow]
    provenance: Provenance

    def findings(self, guardrail: str | None = None, direction: str | None = None) -> int:
        return sum(
            int(f.get("count", 0))
            for e in self.events
            for f in _findings(e)
            if (guardrail is None or f.get("guardrail") == guardrail)
            and (direction is None or f.get("direction") == direction)
        )

    def events_with(self, guardrail: str, direction: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if any(
                f.get("guardrail") == guardrail
                and (direction is None or f.get("direction") == direction)
                for f in _findings(e)
            )
        ]

    def decided(self, stage: str, allowed: bool) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if any(
                d.get("stage") == stage and bool(d.get("allowed")) is allowed for d in _decisions(e)
            )
        ]


def _control(
    cid: str,
    title: str,
    status: Status,
    rule: str,
    evidence: list[str],
    **figures: int,
) -> Control:
    return Control(cid, title, status, rule, evidence, figures)


def _names(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _cc6_1(f: _Facts) -> Control:
    rules = sum(len(s.access.rules) for s in f.specs.values())
    denials = f.decided("access", False)
    identity = f.decided("identity", False)

    def has_access_decision(e: Mapping[str, Any]) -> bool:
        return any(d.get("stage") == "access" for d in _decisions(e))

    checked = [e for e in f.events if has_access_decision(e)]
    unchecked = [e for e in f.events if reached_provider(e) and not has_access_decision(e)]
    audit_mode = [k for k, s in f.specs.items() if s.mode is policy.Mode.AUDIT]
    rule = (
        "pass: every AIPolicy enforces its access rules (mode enforce; no rule, no access) and "
        "every request that reached a provider carries an access decision; attention: a policy "
        "in mode audit, or a request served without an access decision; no-data: no AIPolicy"
    )
    ev = [
        f"{len(f.specs)} AIPolicies define {rules} access rules (Access review: who may)",
        f"{len(checked)} of {len(f.events)} requests were decided by access rules; "
        f"{len(denials)} denied by them, {len(identity)} failed identity verification "
        "(Access review: who did)",
    ]
    if audit_mode:
        ev.append(f"mode audit (denials recorded, not enforced): {_names(audit_mode)}")
    if unchecked:
        ev.append(f"{len(unchecked)} requests reached a provider without an access decision")
    status: Status = NO_DATA if not f.specs else ATTENTION if audit_mode or unchecked else PASS
    return _control(
        "CC6.1",
        "Logical access: who may use which models",
        status,
        rule,
        ev,
        policies=len(f.specs),
        access_rules=rules,
        access_decisions=len(checked),
        access_denials=len(denials),
        identity_failures=len(identity),
    )


def _tls_ok(e: Mapping[str, Any]) -> bool:
    return e.get("tls.protocol.name") == "tls" and str(e.get("tls.protocol.version")) in (
        "1.2",
        "1.3",
    )


def _cc6_6(f: _Facts) -> Control:
    sent = [e for e in f.events if reached_provider(e)]
    weak = [e for e in sent if not _tls_ok(e)]
    v13 = sum(1 for e in sent if str(e.get("tls.protocol.version")) == "1.3")
    versions = Counter(
        f"TLS {e.get('tls.protocol.version')} {e.get('tls.cipher')}" for e in sent if _tls_ok(e)
    )
    ev = [
        f"{len(sent)} requests reached a provider; negotiated: "
        + ("; ".join(f"{k} x{n}" for k, n in versions.most_common()) or "none")
        + " (TLS table)"
    ]
    if weak:
        ev.append(f"{len(weak)} requests were sent without TLS 1.2 or newer")
    rule = (
        "pass: every request that reached a provider negotiated TLS 1.2 or 1.3 (as recorded "
        "per event); attention: any plaintext or older protocol; no-data: no request reached "
        "a provider"
    )
    status: Status = NO_DATA if not sent else ATTENTION if weak else PASS
    return _control(
        "CC6.6",
        "Transmission protection: TLS actually negotiated",
        status,
        rule,
        ev,
        requests_sent=len(sent),
        tls13=v13,
        without_strong_tls=len(weak),
    )


def _cc6_7(f: _Facts) -> Control:
    hits = f.events_with("prompt_injection", "input")
    blocked = [e for e in hits if denied(e)]
    off = [
        k
        for k, s in f.specs.items()
        if not s.guardrails.input.prompt_injection.enabled
        or s.guardrails.input.prompt_injection.action is not policy.DetectAction.BLOCK
    ]
    ev = [
        f"{len(hits)} requests with prompt-injection findings "
        f"({f.findings('prompt_injection', 'input')} findings); {len(blocked)} blocked "
        "(Guardrail audit log)",
    ]
    if off:
        ev.append(f"prompt-injection guardrail off or not blocking in: {_names(off)}")
    if len(blocked) < len(hits):
        ev.append(f"{len(hits) - len(blocked)} detections were not blocked")
    rule = (
        "pass: every AIPolicy blocks prompt injection and every detection in the period was "
        "blocked; attention: a policy that does not block, or a detection let through; "
        "no-data: no AIPolicy"
    )
    status: Status = (
        NO_DATA if not f.specs else ATTENTION if off or len(blocked) < len(hits) else PASS
    )
    return _control(
        "CC6.7",
        "Malicious input: prompt-injection detection",
        status,
        rule,
        ev,
        detections=len(hits),
        blocked=len(blocked),
        policies_not_blocking=len(off),
    )


def _cc7_2(f: _Facts) -> Control:
    bad = [c for c in f.chains if not c.verified]
    ev = [
        f"{len(f.events)} audit events in the period from {len(f.chains)} sidecar chains; "
        f"{len(f.chains) - len(bad)} chains verified intact (Chain verification)",
    ]
    if bad:
        ev.append(f"chains with problems: {_names(c.instance for c in bad)}")
    rule = (
        "pass: the period has audit events and every sidecar chain they belong to verifies "
        "(hash chain intact, no gap, edit or conflict); attention: a chain with problems; "
        "no-data: no audit events in the period"
    )
    status: Status = NO_DATA if not f.events else ATTENTION if bad else PASS
    return _control(
        "CC7.2",
        "Monitoring: complete, tamper-evident audit trail",
        status,
        rule,
        ev,
        events=len(f.events),
        chains=len(f.chains),
        chains_with_problems=len(bad),
    )


def _security_events(f: _Facts) -> list[dict[str, Any]]:
    return [
        e
        for e in f.events
        if denied(e) and any(x.get("guardrail") in SECURITY_GUARDRAILS for x in _findings(e))
    ]


def _cc7_3(f: _Facts) -> Control:
    sec = _security_events(f)
    open_ = [i for i in f.incidents if i.state not in HANDLED_STATES]
    ev = [
        f"{len(f.incidents)} incidents in the period, {len(open_)} not yet acknowledged, "
        f"resolved or decided (Incident report)",
        f"{len(sec)} requests blocked for a security guardrail (injection, secrets, moderation)",
    ]
    rule = (
        "pass: every incident in the period has been acknowledged, resolved or decided; "
        "attention: open incidents, or blocked security events without any incident; "
        "no-data: neither incidents nor security events"
    )
    status: Status
    if not f.incidents and not sec:
        status = NO_DATA
    elif open_ or (sec and not f.incidents):
        status = ATTENTION
    else:
        status = PASS
    return _control(
        "CC7.3",
        "Incident detection and response",
        status,
        rule,
        ev,
        incidents=len(f.incidents),
        open_incidents=len(open_),
        security_events=len(sec),
    )


def _cc8_1(f: _Facts) -> Control:
    stale = [
        f"{p.namespace}/{p.name}"
        for p in f.policies
        if p.ready != "True" or p.observed_generation != p.generation
    ]
    changes = sum(max(0, len(p.hashes_in_events) - 1) for p in f.policies)
    ev = [
        f"{len(f.policies)} AIPolicies with generation, observed generation and compiled hash "
        "(Policies)",
        f"{changes} policy changes observed in the period (a new compiled hash in the audit "
        "events of a policy)",
    ]
    if stale:
        ev.append(f"not Ready or not yet reconciled: {_names(stale)}")
    if f.unparsed:
        ev.append(f"not readable by this generator: {_names(f.unparsed)}")
    rule = (
        "pass: every AIPolicy is Ready and its latest generation compiled (observedGeneration "
        "= generation); attention: one is not; no-data: no AIPolicy"
    )
    status: Status = NO_DATA if not f.policies else ATTENTION if stale or f.unparsed else PASS
    return _control(
        "CC8.1",
        "Change management: policy versions in force",
        status,
        rule,
        ev,
        policies=len(f.policies),
        policy_changes=changes,
        not_current=len(stale),
    )


def _a1_1(f: _Facts) -> Control:
    limited = f.decided("rate_limit", False)
    without = [k for k, s in f.specs.items() if not s.rate_limits.limits]
    ev = [
        f"{len(limited)} requests refused by rate limits (Rate limits table)",
        f"{len(f.specs) - len(without)} of {len(f.specs)} AIPolicies define rate limits",
    ]
    if without:
        ev.append(f"no rate limits: {_names(without)}")
    rule = "pass: every AIPolicy defines rate limits; attention: one has none; no-data: no AIPolicy"
    status: Status = NO_DATA if not f.specs else ATTENTION if without else PASS
    return _control(
        "A1.1",
        "Capacity: rate limiting",
        status,
        rule,
        ev,
        rate_limited=len(limited),
        policies_without_limits=len(without),
    )


def _a1_2(f: _Facts) -> Control:
    tried = [e for e in f.events if _attempts(e)]
    over = [e for e in tried if failed_over(e)]
    recovered = [e for e in over if reached_provider(e)]
    failed = [e for e in tried if not reached_provider(e)]
    ev = [
        f"{len(over)} requests failed over to another attempt, {len(recovered)} of them served "
        "(Failover table)",
        f"{len(failed)} requests got no provider answer after all attempts",
    ]
    rule = (
        "pass: every request whose first provider attempt failed was served by a later "
        "attempt; attention: requests that no attempt could serve; no-data: no request "
        "reached the upstream stage"
    )
    status: Status = NO_DATA if not tried else ATTENTION if failed else PASS
    return _control(
        "A1.2",
        "Availability: provider failover",
        status,
        rule,
        ev,
        failovers=len(over),
        recovered=len(recovered),
        unserved=len(failed),
    )


def _pi1_1(f: _Facts) -> Control:
    checked = [
        e
        for e in f.events
        if any(d.get("stage") == "guardrail" for d in _decisions(e)) or reached_provider(e)
    ]
    rejected = [
        e
        for e in f.events
        if denied(e)
        and any(
            d.get("stage") == "guardrail"
            and str(d.get("rule") or "").startswith("guardrails.input")
            for d in _decisions(e)
            if not d.get("allowed", True)
        )
    ]
    unscanned = sum(sum(int(v) for v in _g(e, "aiguard.unscanned", {}).values()) for e in f.events)
    ev = [
        f"{len(checked)} requests passed the input guardrails, {len(rejected)} rejected by them "
        "(Guardrail audit log)",
        f"{unscanned} content parts no guardrail could read",
    ]
    rule = (
        "pass: input guardrails decided the period's requests and every content part was "
        "scanned; attention: parts no guardrail could read; no-data: no audit events"
    )
    status: Status = NO_DATA if not f.events else ATTENTION if unscanned else PASS
    return _control(
        "PI1.1",
        "Processing integrity: input validation",
        status,
        rule,
        ev,
        checked=len(checked),
        rejected=len(rejected),
        unscanned_parts=unscanned,
    )


def _pi1_4(f: _Facts) -> Control:
    out_findings = f.findings(direction="output")
    out_blocked = [
        e
        for e in f.events
        if any(
            not d.get("allowed", True)
            and d.get("stage") == "guardrail"
            and str(d.get("rule") or "").startswith("guardrails.output")
            for d in _decisions(e)
        )
    ]
    approvals = [i for i in f.incidents if i.approval]
    pending = [i for i in approvals if i.approval == "requested"]
    off = [
        k
        for k, s in f.specs.items()
        if not (s.guardrails.output.pii.enabled or s.guardrails.output.secrets.enabled)
    ]
    ev = [
        f"{out_findings} output findings, {len(out_blocked)} responses blocked (Guardrail "
        "audit log)",
        f"{len(approvals)} human-approval requests: "
        f"{sum(1 for i in approvals if i.approval.startswith('approved'))} approved, "
        f"{sum(1 for i in approvals if i.approval.startswith('denied'))} denied, "
        f"{len(pending)} pending (Incident report)",
    ]
    if off:
        ev.append(f"no output guardrail: {_names(off)}")
    rule = (
        "pass: every AIPolicy reviews output (PII or secrets guardrail) and no approval request "
        "is left undecided; attention: otherwise; no-data: no AIPolicy"
    )
    status: Status = NO_DATA if not f.specs else ATTENTION if off or pending else PASS
    return _control(
        "PI1.4",
        "Processing integrity: output review and human approval",
        status,
        rule,
        ev,
        output_findings=out_findings,
        output_blocked=len(out_blocked),
        approvals=len(approvals),
        approvals_pending=len(pending),
    )


def _c1_1(f: _Facts) -> Control:
    types: Counter[str] = Counter()
    for e in f.events:
        for x in _findings(e):
            if x.get("guardrail") == "pii":
                types[str(x.get("type"))] += int(x.get("count", 0))
    off = [k for k, s in f.specs.items() if not s.guardrails.input.pii.enabled]
    ev = [
        f"{sum(types.values())} personal-data findings by type: "
        + (", ".join(f"{t} {n}" for t, n in sorted(types.items())) or "none")
        + " (PII table)"
    ]
    if off:
        ev.append(f"input PII guardrail disabled: {_names(off)}")
    rule = (
        "pass: every AIPolicy classifies personal data in requests (input PII guardrail on); "
        "attention: one does not; no-data: no AIPolicy"
    )
    status: Status = NO_DATA if not f.specs else ATTENTION if off else PASS
    return _control(
        "C1.1",
        "Confidentiality: data classification",
        status,
        rule,
        ev,
        pii_findings=sum(types.values()),
        pii_types=len(types),
    )


def _c1_2(f: _Facts) -> Control:
    generated = audit.parse_time(f.provenance.generated_at)
    overdue = 0
    for e in f.events:
        spec = f.specs.get(f"{e.get(audit.NAMESPACE)}/{e.get(audit.POLICY_NAME)}")
        if spec is None:
            continue
        # one day of slack: the purge job runs periodically, not at the cutoff instant
        if (
            generated - audit.parse_time(str(e[audit.TIME]))
            > (spec.audit.retention_days + 1) * 86400
        ):
            overdue += 1
    purged = sum(p.count for p in f.purges)
    ev = [
        f"{len(f.purges)} purge runs in the period deleted {purged} events (Retention and "
        "purge records)",
        "retention per AIPolicy: "
        + (", ".join(f"{k} {s.audit.retention_days} d" for k, s in sorted(f.specs.items())) or "-"),
    ]
    if overdue:
        ev.append(f"{overdue} events are kept past their policy's retention (+1 day)")
    rule = (
        "pass: no audit event is kept more than a day past its policy's retentionDays, and "
        "purges are recorded; attention: overdue events; no-data: no AIPolicy"
    )
    status: Status = NO_DATA if not f.specs else ATTENTION if overdue else PASS
    return _control(
        "C1.2",
        "Confidentiality: retention and disposal",
        status,
        rule,
        ev,
        purge_runs=len(f.purges),
        purged_events=purged,
        overdue_events=overdue,
    )


def _p4_1(f: _Facts) -> Control:
    redactions = sum(
        int(x.get("count", 0))
        for e in f.events
        for x in _findings(e)
        if x.get("action") in REDACTING and e.get("aiguard.mode") == "enforce"
    )
    capture = [
        k for k, s in f.specs.items() if s.audit.content_capture is not policy.ContentCapture.NONE
    ]
    ev = [
        f"{redactions} detected items redacted before leaving the pod (Data flows)",
        f"content capture: {len(f.specs) - len(capture)} AIPolicies keep hashes and decisions "
        f"only; {len(capture)} also keep redacted content"
        + (f" ({_names(capture)})" if capture else ""),
    ]
    rule = (
        "pass: every AIPolicy keeps no content (contentCapture none) or only redacted content; "
        "attention: never (informational); no-data: no AIPolicy"
    )
    status: Status = NO_DATA if not f.specs else PASS
    return _control(
        "P4.1",
        "Privacy: collection limited to what is needed",
        status,
        rule,
        ev,
        redactions=redactions,
        policies_capturing_content=len(capture),
    )


def _p6_1(f: _Facts) -> Control:
    sent = [e for e in f.events if reached_provider(e)]
    exposed = [
        e
        for e in sent
        if any(
            x.get("guardrail") == "pii"
            and x.get("direction") == "input"
            and (x.get("action") not in REDACTING or e.get("aiguard.mode") != "enforce")
            for x in _findings(e)
        )
    ]
    providers = Counter(
        f"{next(a.get('provider') for a in reversed(_attempts(e)) if a.get('outcome') == 'ok')}"
        f"/{_flow_model(e)}"
        for e in sent
    )
    ev = [
        f"{len(sent)} requests disclosed to third-party providers: "
        + (", ".join(f"{k} x{n}" for k, n in sorted(providers.items())) or "none")
        + " (Data flows)",
    ]
    if exposed:
        ev.append(f"{len(exposed)} requests sent personal data unredacted")
    rule = (
        "pass: no personal data detected in a request reached a provider unredacted; "
        "attention: some did (action allow/flag, or mode audit); no-data: no request reached "
        "a provider"
    )
    status: Status = NO_DATA if not sent else ATTENTION if exposed else PASS
    return _control(
        "P6.1",
        "Privacy: disclosure to third-party providers",
        status,
        rule,
        ev,
        disclosed_requests=len(sent),
        unredacted_pii_requests=len(exposed),
        provider_models=len(providers),
    )


CRITERIA: Final = (
    _cc6_1,
    _cc6_6,
    _cc6_7,
    _cc7_2,
    _cc7_3,
    _cc8_1,
    _a1_1,
    _a1_2,
    _pi1_1,
    _pi1_4,
    _c1_1,
    _c1_2,
    _p4_1,
    _p6_1,
)


# --------------------------------------------------------------------------- the report


def build(sources: Sources, provenance: Provenance) -> Report:
    """The report of the period. ``sources.events`` must be the period's events (collect
    asks the collector for exactly that); they are sorted here by time."""
    events = sorted(
        sources.events,
        key=lambda e: (
            str(e.get(audit.TIME, "")),
            str(e.get(audit.INSTANCE, "")),
            e.get(audit.SEQUENCE, 0),
        ),
    )
    start, end = provenance.period_from, provenance.period_to
    specs: dict[str, policy.AIPolicySpec] = {}
    unparsed: list[str] = []
    for obj in sources.policies:
        spec = _parse_policy(obj)
        if spec is None:
            unparsed.append(_key(obj))
        else:
            specs[_key(obj)] = spec
    policies = policy_rows(sources.policies, events)
    incidents = incident_rows(sources.incidents, start, end)
    chains = chain_rows(sources.chains, events)
    purges = purge_rows(sources.purges)
    facts = _Facts(events, specs, unparsed, policies, incidents, chains, purges, provenance)

    outcomes: Counter[tuple[str, ...]] = Counter(
        (str(_g(e, "aiguard.outcome", "")), str(_g(e, "http.response.status_code", "")))
        for e in events
    )
    decisions: Counter[tuple[str, ...]] = Counter(
        (
            str(d.get("stage", "")),
            str(d.get("rule") or ""),
            "allowed" if d.get("allowed") else "refused",
            "enforced" if d.get("enforced", True) else "recorded only",
        )
        for e in events
        for d in _decisions(e)
    )
    tls: Counter[tuple[str, ...]] = Counter(
        (str(e.get("tls.protocol.version") or "none"), str(e.get("tls.cipher") or "none"))
        for e in events
        if reached_provider(e)
    )
    pii: Counter[tuple[str, ...]] = Counter()
    for e in events:
        for x in _findings(e):
            if x.get("guardrail") == "pii":
                pii[(str(x.get("type")), str(x.get("direction")), str(x.get("action")))] += int(
                    x.get("count", 0)
                )
    rate: Counter[tuple[str, ...]] = Counter(
        (str(d.get("rule") or ""),)
        for e in events
        for d in _decisions(e)
        if d.get("stage") == "rate_limit" and not d.get("allowed", True)
    )
    failover: Counter[tuple[str, ...]] = Counter(
        (" → ".join(f"{a.get('provider')}:{a.get('outcome')}" for a in _attempts(e)),)
        for e in events
        if failed_over(e)
    )
    users = {subject_of(e) for e in events}
    totals = {
        "events": len(events),
        "allowed": sum(1 for e in events if not denied(e)),
        "denied": sum(1 for e in events if denied(e)),
        "ok": sum(1 for e in events if e.get("aiguard.outcome") == "ok"),
        "reached_provider": sum(1 for e in events if reached_provider(e)),
        "input_tokens": sum(int(_g(e, "gen_ai.usage.input_tokens", 0)) for e in events),
        "output_tokens": sum(int(_g(e, "gen_ai.usage.output_tokens", 0)) for e in events),
        "findings": sum(int(x.get("count", 0)) for e in events for x in _findings(e)),
        "redactions": sum(
            int(x.get("count", 0))
            for e in events
            for x in _findings(e)
            if x.get("action") in REDACTING
        ),
        "failovers": sum(1 for e in events if failed_over(e)),
        "rate_limited": len(facts.decided("rate_limit", False)),
        "subjects": len(users),
        "chains": len(chains),
        "incidents": len(incidents),
        "purges": len(purges),
        "policies": len(sources.policies),
    }
    notes = [
        "Members of the group system:masters pass every authorisation check without RBAC; "
        "they can change AIPolicies although no binding names them.",
        "Evidence is sample-free: identities, model and provider names, counts, hashes and "
        "decisions; no prompt, response or finding text.",
    ]
    notes += sources.notes
    if unparsed:
        notes.append(f"AIPolicies this generator could not read: {_names(unparsed)}")
    return Report(
        provenance=provenance,
        totals=totals,
        controls=[criterion(facts) for criterion in CRITERIA],
        outcomes=_counts(outcomes, ("outcome", "status")),
        decisions=_counts(decisions, ("stage", "rule", "decision", "enforcement")),
        grants=grants(sources.policies),
        usage=usage(events),
        editors=editors(sources.roles, sources.bindings),
        flows=flows(events),
        guardrail_log=guardrail_log(events),
        chains=chains,
        chain_ok=bool(chains) and all(c.verified for c in chains),
        incidents=incidents,
        purges=purges,
        policies=policies,
        tls=_counts(tls, ("version", "cipher")),
        pii=_counts(pii, ("type", "direction", "action")),
        rate_limits=_counts(rate, ("rule",)),
        failovers=_counts(failover, ("path",)),
        notes=notes,
    )


def now_rfc3339(now: dt.datetime) -> str:
    return audit.format_time(now.timestamp())
