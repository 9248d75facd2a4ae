"""The evidence report from hand-built audit events and API objects: exact numbers, every
criterion with the status its rule gives, the access review (who may, who did, who can change
policies), data flows, the guardrail log, incidents and approvals."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from aiguard_api import audit
from aiguard_operator.evidence import build
from tests.harness.auditdata import attributes

T0 = audit.parse_time("2025-06-01T12:00:00Z")
PERIOD = ("2025-06-01T00:00:00.000000Z", "2025-06-02T00:00:00.000000Z")
NS = "team-a"
REASON_MARKER = "reason-text-not-for-the-bundle"

PROVENANCE = build.Provenance(
    period_from=PERIOD[0],
    period_to=PERIOD[1],
    generated_at="2025-06-02T08:00:00.000000Z",
    generator="kubectl-aiguard evidence",
    generator_version="0.1.0",
    cluster_server="https://127.0.0.1:6443",
    cluster_version="v1.37.2",
    collector_url="http://127.0.0.1:15093",
    namespace=None,
)


def decision(stage: str, allowed: bool, rule: str | None, enforced: bool = True) -> dict[str, Any]:
    return {"stage": stage, "allowed": allowed, "rule": rule, "reason": REASON_MARKER,
            "enforced": enforced}  # fmt: skip


ACCESS_OK = decision("access", True, "spec.access.rules[everyone]")


def finding(guardrail: str, type_: str, action: str, count: int = 1) -> dict[str, Any]:
    return {"direction": "input", "guardrail": guardrail, "type": type_, "action": action,
            "count": count}  # fmt: skip


def refused(status: int, outcome: str, **changes: Any) -> dict[str, Any]:
    """Attributes of a request refused before it reached a provider."""
    return {
        "aiguard.failover.path": [], "tls.protocol.name": None, "tls.protocol.version": None,
        "tls.cipher": None, "gen_ai.response.model": None, "gen_ai.usage.input_tokens": None,
        "gen_ai.usage.output_tokens": None, "http.response.status_code": status,
        "aiguard.outcome": outcome, "error.type": outcome, **changes,
    }  # fmt: skip


# The scenario: (what, attribute changes). Every request by alice unless it says otherwise.
SCENARIO: list[tuple[str, dict[str, Any]]] = [
    ("clean", {}),
    ("pii redacted", {
        "aiguard.decisions": [ACCESS_OK, decision("guardrail", True, "guardrails.input.pii")],
        "aiguard.findings": [finding("pii", "EMAIL_ADDRESS", "redact", 2),
                             finding("pii", "PHONE_NUMBER", "redact")],
    }),
    ("injection blocked", refused(400, "guardrail_blocked", **{
        "aiguard.decisions": [ACCESS_OK,
                              decision("guardrail", False, "guardrails.input.prompt_injection")],
        "aiguard.findings": [finding("prompt_injection", "jailbreak", "block")],
    })),
    ("failover", {
        "aiguard.failover.path": [
            {"provider": "openai-main", "model": "gpt-4o", "outcome": "5xx", "status": 503,
             "seconds": 0.01},
            {"provider": "openai-backup", "model": "gpt-4o", "outcome": "ok", "status": 200,
             "seconds": 0.01},
        ],
    }),
    ("rate limited", refused(429, "rate_limited", **{
        "user.id": "bob",
        "aiguard.decisions": [ACCESS_OK,
                              decision("rate_limit", False, "spec.rateLimits.limits[per-user]")],
    })),
    ("access denied", refused(403, "access_denied", **{
        "user.id": "mallory", "aiguard.user.groups": [], "gen_ai.request.model": "claude-x",
        "aiguard.decisions": [decision("access", False, None)],
    })),
]  # fmt: skip


def events_of(
    scenario: list[tuple[str, dict[str, Any]]], *, pod: str = "chatbot-0"
) -> list[dict[str, Any]]:
    ids = audit.EventIds()
    prev, out = audit.GENESIS, []
    for i, (_, changes) in enumerate(scenario):
        now = T0 + i
        e = attributes(namespace=NS, pod=pod, service_account="chatbot", policy="test-policy",
                       start=now - 0.02)  # fmt: skip
        e.update(copy.deepcopy(changes))
        e.update({"id": ids.new(now), "time": audit.format_time(now),
                  "instance": audit.instance_id(NS, pod, "boot1"), "sequence": i + 1,
                  "prev_hash": prev})  # fmt: skip
        e["hash"] = prev = audit.event_hash(e)
        out.append(e)
    return out


def policy_object(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aiguard.dev/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": "test-policy", "namespace": NS, "generation": 2,
                     "creationTimestamp": "2025-05-01T00:00:00Z"},
        "spec": {
            "providers": [{"name": "openai-main", "type": "openai",
                           "baseURL": "https://api.openai.com/v1",
                           "apiKeySecretRef": {"name": "openai"}}],
            "routes": [{"name": "gpt", "models": ["gpt-*"],
                        "targets": [{"provider": "openai-main"}]}],
            "access": {"rules": [{"name": "everyone", "subjects": {"groups": ["team-a"]},
                                  "models": ["gpt-*"]}]},
            "rateLimits": {"limits": [{"name": "per-user", "scope": "user",
                                       "requestsPerMinute": 5}]},
            **spec,
        },
        "status": {
            "observedGeneration": 2,
            "compiledHash": "sha256:" + "a" * 64,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Compiled"}],
            "coverage": {"governedPods": 3, "injectedPods": 2, "uninjectedPods": ["legacy-0"]},
        },
    }  # fmt: skip


def incident(name: str, state: str, approval: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "severity": "high", "policy": "test-policy", "pod": "chatbot-0",
        "guardrail": "prompt_injection", "count": 1, "firstSeen": "2025-06-01T12:00:02Z",
        "lastSeen": "2025-06-01T12:00:02Z", "state": state,
    }  # fmt: skip
    if approval is not None:
        spec["approval"] = approval
    return {"kind": "AIIncident", "metadata": {"name": name, "namespace": NS}, "spec": spec,
            "status": {"history": [{"to": state}]}}  # fmt: skip


ROLES = [
    {"kind": "ClusterRole", "metadata": {"name": "cluster-admin"},
     "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
    {"kind": "ClusterRole", "metadata": {"name": "aiguard-editor"},
     "rules": [{"apiGroups": ["aiguard.dev"], "resources": ["aipolicies"],
                "verbs": ["get", "create", "update", "patch"]}]},
    {"kind": "Role", "metadata": {"name": "policy-viewer", "namespace": NS},
     "rules": [{"apiGroups": ["aiguard.dev"], "resources": ["aipolicies"],
                "verbs": ["get", "list", "watch"]}]},
    {"kind": "Role", "metadata": {"name": "policy-deleter", "namespace": NS},
     "rules": [{"apiGroups": ["aiguard.dev"], "resources": ["aipolicies", "aiincidents"],
                "verbs": ["delete"]}]},
]  # fmt: skip
BINDINGS = [
    {"kind": "ClusterRoleBinding", "metadata": {"name": "cluster-admin"},
     "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
     "subjects": [{"kind": "Group", "name": "system:masters"}]},
    {"kind": "RoleBinding", "metadata": {"name": "carol-edits", "namespace": NS},
     "roleRef": {"kind": "ClusterRole", "name": "aiguard-editor"},
     "subjects": [{"kind": "User", "name": "carol"}]},
    {"kind": "RoleBinding", "metadata": {"name": "viewers", "namespace": NS},
     "roleRef": {"kind": "Role", "name": "policy-viewer"},
     "subjects": [{"kind": "User", "name": "victor"}]},
    {"kind": "RoleBinding", "metadata": {"name": "cleanup", "namespace": NS},
     "roleRef": {"kind": "Role", "name": "policy-deleter"},
     "subjects": [{"kind": "ServiceAccount", "name": "janitor"}]},
]  # fmt: skip


def chain_info(events: list[dict[str, Any]], ok: bool = True) -> dict[str, Any]:
    return {"instance": events[0]["instance"], "events": len(events), "conflicts": 0,
            "head": {"sequence": events[-1]["sequence"], "hash": events[-1]["hash"]},
            "start": None, "verification": {"ok": ok, "problems": []}}  # fmt: skip


PURGE = {"schema": audit.PURGE_SCHEMA, "id": "p1", "time": "2025-06-01T03:00:00Z",
         "namespace": NS, "policy": "test-policy",
         "rule": f"AIPolicy {NS}/test-policy spec.audit.retentionDays=400",
         "retention_days": 400, "cutoff": "2024-04-27T03:00:00Z", "count": 4,
         "oldest": "2024-04-01T00:00:00Z", "newest": "2024-04-02T00:00:00Z",
         "chains": [{"instance": "x", "first_sequence": 1, "last_sequence": 4,
                     "last_hash": audit.GENESIS, "count": 4}]}  # fmt: skip


def sources(**changes: Any) -> build.Sources:
    events = events_of(SCENARIO)
    src = build.Sources(
        events=events,
        policies=[policy_object()],
        incidents=[
            incident("injection-1", "open"),
            incident("review-1", "approved", {"requestId": "r1", "decidedBy": "dave",
                                               "decidedAt": "2025-06-01T12:01:00Z"}),
            incident("review-2", "pending-approval", {"requestId": "r2"}),
            incident("old-1", "resolved") | {"spec": incident("old-1", "resolved")["spec"] | {
                "firstSeen": "2025-04-01T00:00:00Z", "lastSeen": "2025-04-02T00:00:00Z"}},
        ],
        roles=copy.deepcopy(ROLES),
        bindings=copy.deepcopy(BINDINGS),
        chains=[chain_info(events)],
        purges=[PURGE],
    )  # fmt: skip
    for k, v in changes.items():
        setattr(src, k, v)
    return src


@pytest.fixture
def report() -> build.Report:
    return build.build(sources(), PROVENANCE)


def control(report: build.Report, cid: str) -> build.Control:
    (c,) = [c for c in report.controls if c.id == cid]
    return c


def test_every_criterion_is_present_once_in_order(report: build.Report) -> None:
    assert [c.id for c in report.controls] == [
        "CC6.1", "CC6.6", "CC6.7", "CC7.2", "CC7.3", "CC8.1", "A1.1", "A1.2", "PI1.1", "PI1.4",
        "C1.1", "C1.2", "P4.1", "P6.1",
    ]  # fmt: skip
    assert all(c.rule and c.evidence for c in report.controls)


def test_totals_count_the_scenario_exactly(report: build.Report) -> None:
    t = report.totals
    assert (t["events"], t["allowed"], t["denied"], t["ok"]) == (6, 3, 3, 3)
    assert t["reached_provider"] == 3
    assert (t["findings"], t["redactions"], t["failovers"], t["rate_limited"]) == (4, 3, 1, 1)
    assert (t["input_tokens"], t["output_tokens"]) == (36, 21)
    assert (t["subjects"], t["chains"], t["incidents"], t["purges"]) == (3, 1, 3, 1)


@pytest.mark.parametrize(
    ("cid", "status", "figures"),
    [
        ("CC6.1", "pass", {"policies": 1, "access_rules": 1, "access_decisions": 6,
                           "access_denials": 1, "identity_failures": 0}),
        ("CC6.6", "pass", {"requests_sent": 3, "tls13": 3, "without_strong_tls": 0}),
        ("CC6.7", "pass", {"detections": 1, "blocked": 1, "policies_not_blocking": 0}),
        ("CC7.2", "pass", {"events": 6, "chains": 1, "chains_with_problems": 0}),
        ("CC7.3", "attention", {"incidents": 3, "open_incidents": 2, "security_events": 1}),
        ("CC8.1", "pass", {"policies": 1, "policy_changes": 0, "not_current": 0}),
        ("A1.1", "pass", {"rate_limited": 1, "policies_without_limits": 0}),
        ("A1.2", "pass", {"failovers": 1, "recovered": 1, "unserved": 0}),
        ("PI1.1", "pass", {"checked": 4, "rejected": 1, "unscanned_parts": 0}),
        ("PI1.4", "attention", {"output_findings": 0, "output_blocked": 0, "approvals": 2,
                                "approvals_pending": 1}),
        ("C1.1", "pass", {"pii_findings": 3, "pii_types": 2}),
        ("C1.2", "pass", {"purge_runs": 1, "purged_events": 4, "overdue_events": 0}),
        ("P4.1", "pass", {"redactions": 3, "policies_capturing_content": 0}),
        ("P6.1", "pass", {"disclosed_requests": 3, "unredacted_pii_requests": 0,
                          "provider_models": 2}),
    ],
)  # fmt: skip
def test_each_criterion_has_its_status_and_figures(
    report: build.Report, cid: str, status: str, figures: dict[str, int]
) -> None:
    c = control(report, cid)
    assert (c.status, c.figures) == (status, figures)


def test_when_nothing_is_in_scope_then_every_criterion_says_no_data() -> None:
    empty = build.build(build.Sources(), PROVENANCE)
    assert {c.status for c in empty.controls} == {"no-data"}
    assert empty.chain_ok is False


def test_an_edited_event_makes_monitoring_need_attention() -> None:
    src = sources()
    src.events[3]["gen_ai.usage.output_tokens"] = 1  # changed after it was written
    r = build.build(src, PROVENANCE)
    assert control(r, "CC7.2").status == "attention"
    (row,) = r.chains
    assert not row.verified
    assert row.problems == [f"edited: #4 id {src.events[3]['id']}: content does not match its hash"]


def test_a_chain_the_collector_could_not_verify_needs_attention() -> None:
    src = sources()
    src.chains = [chain_info(src.events, ok=False)]
    assert control(build.build(src, PROVENANCE), "CC7.2").status == "attention"


def test_audit_mode_and_unblocked_injection_need_attention() -> None:
    scenario = copy.deepcopy(SCENARIO)
    scenario[2] = ("injection flagged", {
        "aiguard.mode": "audit",
        "aiguard.decisions": [ACCESS_OK, decision("guardrail", False,
                                                  "guardrails.input.prompt_injection",
                                                  enforced=False)],
        "aiguard.findings": [finding("prompt_injection", "jailbreak", "block")],
    })  # fmt: skip
    r = build.build(
        sources(events=events_of(scenario), policies=[policy_object(mode="audit")]), PROVENANCE
    )
    assert control(r, "CC6.1").status == "attention"
    cc67 = control(r, "CC6.7")
    assert (cc67.status, cc67.figures["detections"], cc67.figures["blocked"]) == ("attention", 1, 0)


def test_personal_data_sent_unredacted_needs_attention_under_p6_1() -> None:
    scenario = copy.deepcopy(SCENARIO)
    scenario[1][1]["aiguard.findings"] = [finding("pii", "EMAIL_ADDRESS", "flag")]
    r = build.build(sources(events=events_of(scenario)), PROVENANCE)
    assert control(r, "P6.1").status == "attention"
    assert control(r, "P6.1").figures["unredacted_pii_requests"] == 1
    assert control(r, "P4.1").figures["redactions"] == 0


def test_plaintext_transmission_needs_attention_under_cc6_6() -> None:
    scenario = copy.deepcopy(SCENARIO)
    scenario[0][1].update({"tls.protocol.name": None, "tls.protocol.version": None})
    r = build.build(sources(events=events_of(scenario)), PROVENANCE)
    assert (control(r, "CC6.6").status, control(r, "CC6.6").figures["without_strong_tls"]) == (
        "attention",
        1,
    )


def test_a_failover_that_no_attempt_could_serve_needs_attention() -> None:
    scenario = [*SCENARIO, ("all attempts failed", refused(502, "upstream_error", **{
        "aiguard.failover.path": [
            {"provider": "openai-main", "model": "gpt-4o", "outcome": "connect", "status": None,
             "seconds": 0.01}],
    }))]  # fmt: skip
    r = build.build(sources(events=events_of(scenario)), PROVENANCE)
    a12 = control(r, "A1.2")
    assert (a12.status, a12.figures) == ("attention", {"failovers": 1, "recovered": 1,
                                                       "unserved": 1})  # fmt: skip


def test_events_older_than_retention_need_attention_under_c1_2() -> None:
    late = dict(PROVENANCE.__dict__, generated_at="2026-07-10T00:00:00.000000Z")
    r = build.build(sources(), build.Provenance(**late))
    assert (control(r, "C1.2").status, control(r, "C1.2").figures["overdue_events"]) == (
        "attention",
        6,
    )


def test_a_policy_change_seen_in_events_is_counted_under_cc8_1() -> None:
    scenario = copy.deepcopy(SCENARIO)
    for _, changes in scenario[3:]:
        changes["aiguard.policy.hash"] = "sha256:" + "b" * 64
    r = build.build(sources(events=events_of(scenario)), PROVENANCE)
    assert control(r, "CC8.1").figures["policy_changes"] == 1
    (row,) = r.policies
    assert row.hashes_in_events == ["sha256:" + "a" * 64, "sha256:" + "b" * 64]


def test_access_review_who_may(report: build.Report) -> None:
    (g,) = report.grants
    assert (g.policy, g.rule, g.groups, g.models) == ("test-policy", "everyone", ["team-a"],
                                                      ["gpt-*"])  # fmt: skip
    assert g.operations == ["chat", "responses", "models"]


def test_access_review_who_did(report: build.Report) -> None:
    assert [(u.subject, u.model, u.allowed, u.denied) for u in report.usage] == [
        ("alice", "gpt-4o", 3, 1),
        ("bob", "gpt-4o", 0, 1),
        ("mallory", "claude-x", 0, 1),
    ]


def test_access_review_who_can_change_policies(report: build.Report) -> None:
    assert [(e.subject_kind, e.subject, e.scope, e.verbs, e.role) for e in report.editors] == [
        ("Group", "system:masters", "cluster",
         ["create", "update", "patch", "delete", "deletecollection"], "cluster-admin"),
        ("ServiceAccount", "team-a/janitor", NS, ["delete"], "policy-deleter"),
        ("User", "carol", NS, ["create", "update", "patch"], "aiguard-editor"),
    ]  # fmt: skip
    assert "victor" not in {e.subject for e in report.editors}, "get/list/watch changes nothing"


def test_data_flows_count_requests_tokens_and_redactions(report: build.Report) -> None:
    flows = {(f.provider, f.model): f for f in report.flows}
    main = flows[("openai-main", "gpt-4o-2024-08-06")]
    assert (main.requests, main.input_tokens, main.output_tokens, main.redactions) == (2, 24, 14, 3)
    assert flows[("openai-backup", "gpt-4o-2024-08-06")].requests == 1
    assert (flows[("(not sent)", "gpt-4o")].requests, flows[("(not sent)", "gpt-4o")].blocked) == (
        2,
        2,
    )
    assert flows[("(not sent)", "claude-x")].blocked == 1
    assert sum(f.requests for f in report.flows) == 6


def test_guardrail_log_lists_every_finding_with_its_user_and_action(report: build.Report) -> None:
    assert [(v.user, v.guardrail, v.type, v.action, v.count, v.outcome) for v in
            report.guardrail_log] == [
        ("alice", "pii", "EMAIL_ADDRESS", "redact", 2, "ok"),
        ("alice", "pii", "PHONE_NUMBER", "redact", 1, "ok"),
        ("alice", "prompt_injection", "jailbreak", "block", 1, "guardrail_blocked"),
    ]  # fmt: skip


def test_incidents_in_the_period_with_approvals(report: build.Report) -> None:
    assert [(i.name, i.state, i.approval) for i in report.incidents] == [
        ("injection-1", "open", ""),
        ("review-1", "approved", "approved by dave"),
        ("review-2", "pending-approval", "requested"),
    ]


def test_coverage_and_policy_versions(report: build.Report) -> None:
    (p,) = report.policies
    assert (p.generation, p.observed_generation, p.ready) == (2, 2, "True")
    assert (p.governed_pods, p.injected_pods, p.uninjected_pods) == (3, 2, ["legacy-0"])


def test_detail_tables(report: build.Report) -> None:
    assert [(c.labels, c.count) for c in report.pii] == [
        ({"type": "EMAIL_ADDRESS", "direction": "input", "action": "redact"}, 2),
        ({"type": "PHONE_NUMBER", "direction": "input", "action": "redact"}, 1),
    ]
    assert [(c.labels["version"], c.count) for c in report.tls] == [("1.3", 3)]
    assert [(c.labels["rule"], c.count) for c in report.rate_limits] == [
        ("spec.rateLimits.limits[per-user]", 1)
    ]
    assert [(c.labels["path"], c.count) for c in report.failovers] == [
        ("openai-main:5xx → openai-backup:ok", 1)
    ]
    assert sum(c.count for c in report.outcomes) == 6
