"""Report → the human document, as data: sections of paragraphs and tables.

``render_html`` and ``render_md`` format the same sections, so the two readable forms never
say different things.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aiguard_operator.evidence.build import Count, Report

STATUS_LABEL = {"pass": "PASS", "attention": "ATTENTION", "no-data": "NO DATA"}


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    status_column: int | None = None
    """Index of a column holding pass/attention/no-data (coloured in HTML)."""
    empty: str = "none in the period"


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    svg: bool = False
    """Place the data-flow diagram here."""


def _counts(items: Sequence[Count], labels: Sequence[str], header: Sequence[str]) -> Table:
    return Table(
        [*header, "Count"], [[*(c.labels[k] for k in labels), str(c.count)] for c in items]
    )


def _join(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "-"


def short_time(value: str) -> str:
    """``2025-06-01T00:00:00.000000Z`` → ``2025-06-01 00:00:00 UTC`` (seconds kept)."""
    day, _, clock = value.partition("T")
    return f"{day} {clock.split('.')[0].rstrip('Z')} UTC" if clock else value


def title(report: Report) -> str:
    p = report.provenance
    return f"aiguard SOC 2 evidence: {short_time(p.period_from)} to {short_time(p.period_to)}"


def sections(report: Report) -> list[Section]:
    p, t = report.provenance, report.totals
    scope = p.namespace or "all namespaces"
    out: list[Section] = []
    out.append(
        Section(
            "provenance",
            "Provenance",
            [
                f"Period {p.period_from} (inclusive) to {p.period_to} (exclusive), {scope}. "
                f"Generated {p.generated_at} by {p.generator} {p.generator_version} from the "
                f"Kubernetes API server {p.cluster_server} ({p.cluster_version}) and the audit "
                f"collector {p.collector_url}.",
                "manifest.json lists the SHA-256 of every file of this bundle; check it with "
                "`kubectl aiguard evidence --verify DIR`.",
                f"{t['events']} audit events: {t['allowed']} allowed, {t['denied']} refused, "
                f"{t['reached_provider']} reached a provider; {t['findings']} guardrail findings, "
                f"{t['redactions']} redactions, {t['failovers']} failovers, "
                f"{t['rate_limited']} rate-limited; {t['subjects']} distinct users or workloads.",
                *report.notes,
            ],
        )
    )
    out.append(
        Section(
            "controls",
            "Control matrix (Trust Service Criteria)",
            ["Each criterion's status is decided by the rule stated beside it."],
            [
                Table(
                    ["Criterion", "Control", "Status", "Evidence", "Rule"],
                    [
                        [c.id, c.title, c.status, "; ".join(c.evidence), c.rule]
                        for c in report.controls
                    ],
                    status_column=2,
                )
            ],
        )
    )
    out.append(
        Section(
            "access",
            "Access review",
            [
                "Who may use which models (AIPolicy access rules), who actually did in the "
                "period (audit events), and who can change AIPolicies (Kubernetes RBAC: create, "
                "update, patch or delete on aipolicies.aiguard.dev)."
            ],
            [
                Table(
                    [
                        "Policy",
                        "Rule",
                        "Users",
                        "Groups",
                        "Service accounts",
                        "Any caller",
                        "Models",
                        "Operations",
                    ],
                    [
                        [
                            f"{g.namespace}/{g.policy}",
                            g.rule,
                            _join(g.users),
                            _join(g.groups),
                            _join(g.service_accounts),
                            "yes" if g.all_authenticated else "no",
                            _join(g.models),
                            _join(g.operations),
                        ]
                        for g in report.grants
                    ],
                    empty="no access rules: every request is denied",
                ),
                Table(
                    ["Subject", "Kind", "Groups", "Namespace", "Model", "Allowed", "Refused"],
                    [
                        [
                            u.subject,
                            u.subject_kind,
                            u.groups or "-",
                            u.namespace,
                            u.model,
                            str(u.allowed),
                            str(u.denied),
                        ]
                        for u in report.usage
                    ],
                ),
                Table(
                    ["Subject", "Kind", "Scope", "Verbs", "Via binding", "Role"],
                    [
                        [
                            e.subject,
                            e.subject_kind,
                            e.scope,
                            _join(e.verbs),
                            f"{e.binding_kind} {e.binding}",
                            f"{e.role_kind} {e.role}",
                        ]
                        for e in report.editors
                    ],
                ),
            ],
        )
    )
    out.append(
        Section(
            "dataflows",
            "Data flows",
            [
                "Workload → aiguard sidecar → provider and model, with request volumes, tokens "
                "and the items redacted before the request left the pod."
            ],
            [
                Table(
                    [
                        "Workload",
                        "Policy",
                        "Provider",
                        "Model",
                        "Requests",
                        "Input tokens",
                        "Output tokens",
                        "Redactions",
                        "Blocked",
                    ],
                    [
                        [
                            f"{f.namespace}/{f.workload}",
                            f.policy,
                            f.provider,
                            f.model,
                            str(f.requests),
                            str(f.input_tokens),
                            str(f.output_tokens),
                            str(f.redactions),
                            str(f.blocked),
                        ]
                        for f in report.flows
                    ],
                )
            ],
            svg=True,
        )
    )
    out.append(
        Section(
            "guardrails",
            "Guardrail audit log",
            [
                "Every guardrail finding in the period: when, whose request, what fired and "
                "what was done. No content: types and counts only.",
                "Chain verification: "
                + ("every chain intact." if report.chain_ok else "PROBLEMS FOUND (see below)."),
            ],
            [
                Table(
                    [
                        "Time",
                        "User",
                        "Direction",
                        "Guardrail",
                        "Type",
                        "Action",
                        "Count",
                        "Enforced",
                        "Outcome",
                        "Event",
                    ],
                    [
                        [
                            v.time,
                            v.user,
                            v.direction,
                            v.guardrail,
                            v.type,
                            v.action,
                            str(v.count),
                            "yes" if v.enforced else "no (audit mode)",
                            v.outcome,
                            f"{v.instance} #{v.sequence}",
                        ]
                        for v in report.guardrail_log
                    ],
                ),
                Table(
                    [
                        "Sidecar chain",
                        "Events in period",
                        "Stored",
                        "Head",
                        "Starts at",
                        "Verified",
                        "Problems",
                    ],
                    [
                        [
                            c.instance,
                            str(c.events_in_period),
                            str(c.stored_events),
                            str(c.head_sequence),
                            str(c.start_sequence or 1),
                            "pass" if c.verified else "attention",
                            _join(c.problems),
                        ]
                        for c in report.chains
                    ],
                    status_column=5,
                ),
            ],
        )
    )
    out.append(
        Section(
            "incidents",
            "Incident report",
            [
                "AIIncidents whose first-to-last-seen interval overlaps the period, with their "
                "state and any human-approval decision."
            ],
            [
                Table(
                    [
                        "Incident",
                        "Severity",
                        "Policy",
                        "Pod",
                        "Guardrail",
                        "Count",
                        "First seen",
                        "Last seen",
                        "State",
                        "Approval",
                        "Changes",
                    ],
                    [
                        [
                            f"{i.namespace}/{i.name}",
                            i.severity,
                            i.policy,
                            i.pod or "-",
                            i.guardrail,
                            str(i.count),
                            i.first_seen,
                            i.last_seen,
                            i.state,
                            i.approval or "-",
                            str(i.changes),
                        ]
                        for i in report.incidents
                    ],
                )
            ],
        )
    )
    out.append(
        Section(
            "details",
            "Decisions, transmission, classification, capacity, availability",
            [],
            [
                _counts(report.outcomes, ("outcome", "status"), ["Outcome", "HTTP status"]),
                _counts(
                    report.decisions,
                    ("stage", "rule", "decision", "enforcement"),
                    ["Stage", "Rule", "Decision", "Enforcement"],
                ),
                _counts(report.tls, ("version", "cipher"), ["TLS version", "Cipher"]),
                _counts(
                    report.pii,
                    ("type", "direction", "action"),
                    ["Personal data type", "Direction", "Action"],
                ),
                _counts(report.rate_limits, ("rule",), ["Rate limit"]),
                _counts(report.failovers, ("path",), ["Failover path"]),
            ],
        )
    )
    out.append(
        Section(
            "retention",
            "Retention and purge records",
            ["Every retention purge the collector recorded in the period."],
            [
                Table(
                    [
                        "Time",
                        "Policy",
                        "Rule",
                        "Cutoff",
                        "Events deleted",
                        "Oldest",
                        "Newest",
                        "Chains",
                    ],
                    [
                        [
                            r.time,
                            f"{r.namespace}/{r.policy}",
                            r.rule,
                            r.cutoff,
                            str(r.count),
                            r.oldest or "-",
                            r.newest or "-",
                            str(r.chains),
                        ]
                        for r in report.purges
                    ],
                )
            ],
        )
    )
    out.append(
        Section(
            "policies",
            "Policies and coverage",
            [
                "Each AIPolicy's version in force, the compiled hashes seen in the period's audit "
                "events, and the labelled pods that run without a sidecar."
            ],
            [
                Table(
                    [
                        "Policy",
                        "Mode",
                        "Ready",
                        "Generation",
                        "Observed",
                        "Compiled hash",
                        "Hashes in events",
                        "Retention (days)",
                        "Governed pods",
                        "With sidecar",
                        "Without sidecar",
                    ],
                    [
                        [
                            f"{r.namespace}/{r.name}",
                            r.mode,
                            r.ready,
                            str(r.generation),
                            str(r.observed_generation),
                            r.compiled_hash or "-",
                            _join(r.hashes_in_events),
                            str(r.retention_days),
                            str(r.governed_pods),
                            str(r.injected_pods),
                            _join(r.uninjected_pods),
                        ]
                        for r in report.policies
                    ],
                )
            ],
        )
    )
    return out
