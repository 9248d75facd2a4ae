"""Coverage: every pod that asked for the sidecar and runs without it is found, with the
reason, and counted under the policy that governs it."""

from __future__ import annotations

from typing import Any

import pytest

from aiguard_api import constants
from aiguard_api.policy import AIPolicyStatus, LabelSelector
from aiguard_operator import coverage, injection
from aiguard_operator.coverage import SIDECAR_MISSING, PodFacts, PolicySelector
from aiguard_operator.injection import PolicyInfo, SidecarSettings, Skip

OP_NS = "aiguard-system"
SETTINGS = SidecarSettings(image="ghcr.io/aiguard/aiguard-sidecar:0.1.0", version="0.1.0")
ENABLED = {constants.LABEL_INJECT: constants.INJECT_ENABLED}


def policy(name: str, ready: bool = True, **match_labels: str) -> PolicyInfo:
    return PolicyInfo(
        name=name,
        selector=LabelSelector(match_labels=match_labels),
        compiled_hash=f"sha256:{name}" if ready else None,
        configmap=constants.configmap_name(name),
        ready=ready,
    )


CHAT = policy("chat", app="chat")
SEARCH = policy("search", app="search")
TEAM = policy("team", team="x")


def pod(
    name: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    phase: str = "Running",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
        "status": {"phase": phase},
    }


def injected(name: str, labels: dict[str, str], via: PolicyInfo) -> dict[str, Any]:
    plan = injection.InjectionPlan.for_policy(via, SETTINGS)
    return injection.inject(pod(name, labels), plan)


def assess(
    pods: list[dict[str, Any]],
    policies: list[PolicyInfo],
    ns_labels: dict[str, str] | None = None,
    namespace: str = "team-a",
) -> coverage.CoverageReport:
    return coverage.assess(
        pods,
        policies,
        namespace=namespace,
        namespace_labels=ns_labels or {},
        operator_namespace=OP_NS,
    )


# --------------------------------------------------------------------------------------------
# One pod at a time: is it a gap, and why


GAP_TABLE = [
    pytest.param(
        pod("p", {"app": "chat", **ENABLED}),
        {},
        [CHAT],
        SIDECAR_MISSING,
        id="labelled_without_sidecar",
    ),
    pytest.param(
        pod("p", {"app": "chat"}),
        {constants.LABEL_NS_INJECTION: "enabled"},
        [CHAT],
        SIDECAR_MISSING,
        id="namespace_opt_in_without_sidecar",
    ),
    pytest.param(
        injected("p", {"app": "chat", **ENABLED}, CHAT), {}, [CHAT], "injected", id="injected"
    ),
    pytest.param(pod("p", {"app": "chat"}), {}, [CHAT], None, id="not_opted_in"),
    pytest.param(
        pod("p", {"app": "chat", constants.LABEL_INJECT: "disabled"}),
        {constants.LABEL_NS_INJECTION: "enabled"},
        [CHAT],
        None,
        id="opted_out",
    ),
    pytest.param(
        pod("p", {"app": "chat", "team": "x", **ENABLED}),
        {},
        [CHAT, TEAM],
        Skip.POLICY_AMBIGUOUS,
        id="ambiguous",
    ),
    pytest.param(
        pod("p", {"app": "chat", **ENABLED}),
        {},
        [policy("chat", ready=False, app="chat")],
        Skip.POLICY_NOT_READY,
        id="policy_not_ready",
    ),
    pytest.param(
        pod("p", {"app": "other", **ENABLED}), {}, [CHAT], Skip.NO_POLICY_MATCHED, id="no_policy"
    ),
    pytest.param(
        pod("p", ENABLED, {constants.ANNOTATION_POLICY: "gone"}),
        {},
        [CHAT],
        Skip.ANNOTATED_POLICY_MISSING,
        id="annotated_policy_missing",
    ),
    pytest.param(
        pod("p", {"app": "chat", **ENABLED}, hostNetwork=True),
        {},
        [CHAT],
        Skip.HOST_NETWORK,
        id="host_network",
    ),
    pytest.param(
        pod("p", {"app": "chat", **ENABLED}, phase="Succeeded"), {}, [CHAT], None, id="finished"
    ),
    pytest.param(
        pod("p", {"app": "chat", **ENABLED}, phase="Failed"), {}, [CHAT], None, id="failed"
    ),
]


@pytest.mark.parametrize(
    ("the_pod", "ns_labels", "policies", "expected"),
    GAP_TABLE,
)
def test_gap_and_reason(
    the_pod: dict[str, Any], ns_labels: dict[str, str], policies: list[PolicyInfo], expected: Any
) -> None:
    report = assess([the_pod], policies, ns_labels)
    if expected is None:
        assert report.pods == ()
    elif expected == "injected":
        assert [p.state for p in report.pods] == ["injected"]
        assert report.gaps == ()
    else:
        (gap,) = report.gaps
        assert gap.reason == expected, gap.reason


def test_when_deleting_then_not_counted() -> None:
    p = pod("p", {"app": "chat", **ENABLED})
    p["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert assess([p], [CHAT]).pods == ()


def test_when_in_kube_system_then_never_a_gap() -> None:
    p = pod("p", {"app": "chat", **ENABLED})
    assert assess([p], [CHAT], namespace="kube-system").pods == ()


# --------------------------------------------------------------------------------------------
# Counting per policy


def test_counts_per_policy_match_the_status_schema() -> None:
    pods = [
        injected("chat-1", {"app": "chat", **ENABLED}, CHAT),
        injected("chat-2", {"app": "chat", **ENABLED}, CHAT),
        pod("chat-3", {"app": "chat", **ENABLED}),
        pod("chat-0", {"app": "chat", **ENABLED}),
        pod("search-1", {"app": "search"}),  # not opted in: not governed
        pod("both", {"app": "search", "team": "x", **ENABLED}),  # ambiguous
    ]
    report = assess(pods, [CHAT, SEARCH, TEAM])
    by = report.by_policy()
    assert by["chat"] == coverage.Coverage(4, 2, ("chat-0", "chat-3"))
    assert by["search"] == coverage.Coverage(1, 0, ("both",))
    assert by["team"] == coverage.Coverage(1, 0, ("both",))
    status = by["chat"].as_status()
    assert status == {"governedPods": 4, "injectedPods": 2, "uninjectedPods": ["chat-0", "chat-3"]}
    AIPolicyStatus.model_validate({"coverage": status})
    assert report.gap_counts() == {
        ("chat", "sidecar_missing"): 2,
        ("search", "policy_ambiguous"): 1,
        ("team", "policy_ambiguous"): 1,
    }


def test_injected_pods_count_under_the_policy_they_run() -> None:
    # injected by `chat`; since then `team` also selects it: it still counts under `chat` only
    pods = [injected("p", {"app": "chat", "team": "x", **ENABLED}, CHAT)]
    by = assess(pods, [CHAT, TEAM]).by_policy()
    assert (by["chat"].injected_pods, by["team"].governed_pods) == (1, 0)


def test_gaps_under_no_policy_are_reported_without_one() -> None:
    report = assess([pod("lost", {"app": "nothing", **ENABLED})], [CHAT])
    assert report.by_policy()["chat"] == coverage.Coverage(0, 0)
    assert report.gap_counts() == {("", "no_policy_matched"): 1}


def test_status_lists_at_most_max_names_but_counts_exactly() -> None:
    pods = [pod(f"p{i:03}", {"app": "chat", **ENABLED}) for i in range(150)]
    cov = assess(pods, [CHAT]).for_policy("chat")
    status = cov.as_status()
    assert status["governedPods"] - status["injectedPods"] == 150
    assert len(status["uninjectedPods"]) == coverage.MAX_NAMES == 100
    assert status["uninjectedPods"][0] == "p000"


# --------------------------------------------------------------------------------------------
# The kopf-index form: PodFacts + PolicySelector


def test_pod_facts_keep_what_the_rules_read() -> None:
    full = injected("p", {"app": "chat", **ENABLED}, CHAT)
    facts = PodFacts.from_pod(full)
    assert facts.injected
    assert facts.injected_policy == "chat"
    assert constants.ANNOTATION_STATUS not in facts.annotations  # the long JSON is not kept
    hostnet = PodFacts.from_pod(pod("h", {"app": "chat", **ENABLED}, hostNetwork=True))
    assert injection.injection_required(hostnet.as_pod(), {}, operator_namespace=OP_NS) == (
        Skip.HOST_NETWORK
    )
    conflict = PodFacts.from_pod(
        pod("c", ENABLED, containers=[{"name": "a", "ports": [{"containerPort": 15090}]}])
    )
    assert injection.injection_required(conflict.as_pod(), {}, operator_namespace=OP_NS) == (
        Skip.PORT_CONFLICT
    )


def test_count_agrees_with_assess() -> None:
    pods = [
        injected("chat-1", {"app": "chat", **ENABLED}, CHAT),
        pod("chat-2", {"app": "chat", **ENABLED}),
        pod("chat-3", {"app": "chat"}),
        pod("done", {"app": "chat", **ENABLED}, phase="Succeeded"),
    ]
    ns = {constants.LABEL_NS_INJECTION: "enabled"}
    selectors = [PolicySelector("chat", CHAT.selector), PolicySelector("search", SEARCH.selector)]
    got = coverage.count([PodFacts.from_pod(p) for p in pods], selectors, namespace_labels=ns)
    assert got == assess(pods, [CHAT, SEARCH], ns).by_policy()
    assert got["chat"] == coverage.Coverage(3, 1, ("chat-2", "chat-3"))


def test_count_with_bare_facts_sees_pod_label_opt_in() -> None:
    facts = [
        PodFacts("a", {"app": "chat", **ENABLED}, {}, ("app",)),
        PodFacts("b", {"app": "chat", **ENABLED}, {}, ("aiguard-sidecar", "app")),
        PodFacts("c", {"app": "chat"}, {}, ("app",)),  # opted in only by a namespace we can't see
    ]
    got = coverage.count(facts, [PolicySelector("chat", CHAT.selector)])
    assert got["chat"] == coverage.Coverage(2, 1, ("a",))


def test_governing_policy() -> None:
    selectors = [PolicySelector("chat", CHAT.selector), PolicySelector("team", TEAM.selector)]
    facts = PodFacts("p", {"app": "chat"}, {}, ("app",))
    assert coverage.governing_policy(facts, selectors) == "chat"
    both = PodFacts("p", {"app": "chat", "team": "x"}, {}, ("app",))
    assert coverage.governing_policy(both, selectors) is None
    named = PodFacts("p", {"app": "chat", "team": "x"}, {constants.ANNOTATION_POLICY: "team"}, ())
    assert coverage.governing_policy(named, selectors) == "team"
    not_ready = [PolicySelector("chat", CHAT.selector, ready=False)]
    assert coverage.governing_policy(facts, not_ready) == "chat"


def test_report_gives_the_gaps_with_reasons_and_honours_excluded_namespaces() -> None:
    facts = [
        PodFacts.from_pod(pod("a", {"app": "chat", **ENABLED})),
        PodFacts.from_pod(pod("b", {"app": "chat", **ENABLED}, hostNetwork=True)),
    ]
    selectors = [PolicySelector("chat", CHAT.selector)]

    got = coverage.report(facts, selectors, namespace="team-a")
    excluded = coverage.report(facts, selectors, namespace="team-a", excluded_namespaces=["team-a"])

    assert [(g.pod, g.reason) for g in got.gaps] == [
        ("a", SIDECAR_MISSING),
        ("b", Skip.HOST_NETWORK),
    ]
    assert excluded.gaps == ()
    assert excluded.for_policy("chat") == coverage.Coverage(0, 0)


def test_memo_recounts_only_the_pods_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = [PodFacts.from_pod(pod(f"chat-{i}", {"app": "chat", **ENABLED})) for i in range(5)]
    selectors = [PolicySelector("chat", CHAT.selector)]
    memo = coverage.Memo()
    calls: list[str] = []
    original = coverage._assess_pod

    def counting(p: dict[str, Any], *args: Any, **kwargs: Any) -> coverage.PodCoverage | None:
        calls.append(p["metadata"]["name"])
        return original(p, *args, **kwargs)

    monkeypatch.setattr(coverage, "_assess_pod", counting)

    first = memo.report(facts, selectors, namespace="team-a")
    changed = [*facts[:4], PodFacts.from_pod(injected("chat-4", {"app": "chat", **ENABLED}, CHAT))]
    second = memo.report(changed, selectors, namespace="team-a")
    third = memo.report(changed, selectors, namespace="team-a", namespace_labels={"x": "y"})

    assert calls == [*(f"chat-{i}" for i in range(5)), "chat-4", *(f"chat-{i}" for i in range(5))]
    assert first == coverage.report(facts, selectors, namespace="team-a")
    assert second == coverage.report(changed, selectors, namespace="team-a")
    assert second.for_policy("chat") == coverage.Coverage(
        5, 1, tuple(f"chat-{i}" for i in range(4))
    )
    assert third == second
