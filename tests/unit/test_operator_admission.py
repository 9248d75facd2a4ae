"""admission.py: what the pod webhooks answer, log, count and report, and which pods the API
server sends them (the webhook selectors), without kopf or a cluster."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch  # an independent RFC 6902 implementation to check the patches
import pytest

from aiguard_api import constants
from aiguard_api.policy import LabelSelector, LabelSelectorRequirement, SecretKeyRef
from aiguard_operator import admission, injection, metrics
from aiguard_operator.injection import PolicyInfo, SidecarSettings, Skip

NS = "team-a"
OP_NS = "aiguard-system"
SETTINGS = SidecarSettings(image="ghcr.io/aiguard/aiguard-sidecar:0.1.0", version="0.1.0")
KEY = SecretKeyRef(name="openai-api-key", key="api-key")
CHAT = PolicyInfo(
    name="chat",
    selector=LabelSelector(match_labels={"app": "chat"}),
    compiled_hash="sha256:" + "ab" * 32,
    configmap="aiguard-policy-chat",
    ready=True,
    secret_refs=(KEY,),
    provider_key_refs=(KEY,),
)
ENABLED = {constants.LABEL_INJECT: constants.INJECT_ENABLED}
RS_OWNER = {
    "apiVersion": "apps/v1",
    "kind": "ReplicaSet",
    "name": "chat-7d9f8c6b5",
    "uid": "4f1c2d3e-0000-4000-8000-000000000001",
    "controller": True,
    "blockOwnerDeletion": True,
}


def pod(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    *,
    name: str | None = None,
    owner: dict[str, Any] | None = RS_OWNER,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": NS, "labels": {"app": "chat", **(labels or {})}}
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = "chat-7d9f8c6b5-"
    if annotations:
        meta["annotations"] = annotations
    if owner:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "chat:1"}], **spec},
    }


def review(p: dict[str, Any], *, policies: list[PolicyInfo] | None = None) -> admission.Outcome:
    return admission.review(
        p,
        namespace=NS,
        namespace_labels={injection.NAMESPACE_NAME_LABEL: NS},
        policies=[CHAT] if policies is None else policies,
        settings=SETTINGS,
        operator_namespace=OP_NS,
    )


# --------------------------------------------------------------------------------------------
# The webhook configurations: which pods reach which webhook


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """The API server's label selector semantics (matchExpressions only)."""
    reqs = [LabelSelectorRequirement.model_validate(e) for e in selector["matchExpressions"]]
    return LabelSelector(match_expressions=reqs).matches(labels)


HOOKS = admission.pod_webhooks(
    excluded=["kube-system", "kube-public", "kube-node-lease", OP_NS],
    failure_policy="Fail",
    timeout_seconds=10,
)


def reached(ns_labels: dict[str, str], pod_labels: dict[str, str]) -> list[str]:
    """The webhooks the API server would call for a pod with these labels."""
    return [
        hook
        for hook, fields in HOOKS.items()
        if selector_matches(fields["namespaceSelector"], ns_labels)
        and selector_matches(fields["objectSelector"], pod_labels)
    ]


def ns(name: str, injection_label: str | None = None) -> dict[str, str]:
    labels = {injection.NAMESPACE_NAME_LABEL: name}
    if injection_label is not None:
        labels[constants.LABEL_NS_INJECTION] = injection_label
    return labels


ROUTES = [
    pytest.param(ns("team-a"), {}, [], id="unlabelled-pod-plain-namespace-costs-nothing"),
    pytest.param(ns("team-a"), ENABLED, [admission.OBJECT_WEBHOOK], id="pod-opt-in"),
    pytest.param(
        ns("team-a"), {constants.LABEL_INJECT: "disabled"}, [], id="pod-opt-out-costs-nothing"
    ),
    pytest.param(
        ns("team-a"),
        {constants.LABEL_INJECT: "true"},
        [admission.OBJECT_WEBHOOK],
        id="typo-reaches-the-webhook-for-a-warning",
    ),
    pytest.param(ns("team-a", "enabled"), {}, [admission.NAMESPACE_WEBHOOK], id="ns-opt-in"),
    pytest.param(
        ns("team-a", "enabled"), ENABLED, [admission.NAMESPACE_WEBHOOK], id="both-opt-in-once"
    ),
    pytest.param(
        ns("team-a", "enabled"), {constants.LABEL_INJECT: "disabled"}, [], id="pod-opts-out-of-ns"
    ),
    pytest.param(
        ns("team-a", "disabled"),
        ENABLED,
        [admission.OBJECT_WEBHOOK],
        id="ns-disabled-decided-by-the-webhook",
    ),
    pytest.param(ns("kube-system", "enabled"), ENABLED, [], id="kube-system-never"),
    pytest.param(ns(OP_NS, "enabled"), ENABLED, [], id="operator-namespace-never"),
]


@pytest.mark.parametrize(("ns_labels", "pod_labels", "webhooks"), ROUTES)
def test_a_pod_reaches_at_most_one_webhook_and_only_if_it_could_opt_in(
    ns_labels: dict[str, str], pod_labels: dict[str, str], webhooks: list[str]
) -> None:
    assert reached(ns_labels, pod_labels) == webhooks


def test_webhook_settings_are_applied_to_both() -> None:
    hooks = admission.pod_webhooks(
        excluded=["kube-system"], failure_policy="Ignore", timeout_seconds=5
    )

    assert set(hooks) == {admission.NAMESPACE_WEBHOOK, admission.OBJECT_WEBHOOK}
    for fields in hooks.values():
        assert fields["failurePolicy"] == "Ignore"
        assert fields["timeoutSeconds"] == 5
        assert fields["reinvocationPolicy"] == "Never"


def test_a_namespaced_operator_selects_only_its_namespaces() -> None:
    hooks = admission.pod_webhooks(
        excluded=["kube-system"],
        watched=["team-b", "team-a"],
        failure_policy="Fail",
        timeout_seconds=10,
    )

    for fields in hooks.values():
        assert {
            "key": injection.NAMESPACE_NAME_LABEL,
            "operator": "In",
            "values": ["team-a", "team-b"],
        } in fields["namespaceSelector"]["matchExpressions"]
        assert selector_matches(fields["namespaceSelector"], ns("team-a")) or selector_matches(
            fields["namespaceSelector"], ns("team-a", "enabled")
        )
        assert not selector_matches(fields["namespaceSelector"], ns("team-c", "enabled"))
        assert not selector_matches(fields["namespaceSelector"], ns("team-c"))


@pytest.mark.parametrize(
    ("via", "indexed", "expected"),
    [
        # the namespace webhook was called: the API server saw the label, the index lags
        ("namespace", None, "enabled"),
        ("namespace", {}, "enabled"),
        # the object webhook: the namespace is not opted in (any more)
        ("object", {constants.LABEL_NS_INJECTION: "enabled"}, None),
        ("object", {constants.LABEL_NS_INJECTION: "disabled"}, "disabled"),
        ("object", None, None),
    ],
)
def test_namespace_labels_trust_the_webhook_the_api_server_chose(
    via: admission.Via, indexed: dict[str, str] | None, expected: str | None
) -> None:
    labels = admission.namespace_labels(via, NS, indexed)

    assert labels.get(constants.LABEL_NS_INJECTION) == expected
    assert labels[injection.NAMESPACE_NAME_LABEL] == NS


# --------------------------------------------------------------------------------------------
# One pod


def test_when_injected_then_the_patch_gives_the_injected_pod() -> None:
    p = pod(ENABLED)
    outcome = review(p)

    assert outcome.injected
    assert (outcome.decision, outcome.reason) == (metrics.INJECTED, "selector")
    assert outcome.allowed
    plan = injection.InjectionPlan.for_policy(CHAT, SETTINGS)
    assert outcome.plan == plan
    ops = json.loads(json.dumps(list(outcome.patch)))
    assert jsonpatch.apply_patch(p, ops) == injection.inject(p, plan)
    assert outcome.event(p, NS) is None  # injecting is not news
    assert outcome.warnings == ()
    assert outcome.summary().startswith("injected (policy chat by selector, sha256:abab")


def test_when_skipped_as_expected_then_a_normal_event_and_no_warning() -> None:
    p = pod(ENABLED, {constants.ANNOTATION_INJECT: "disabled"})
    outcome = review(p)

    assert (outcome.decision, outcome.reason) == (metrics.SKIPPED, "injection_disabled_by_pod")
    assert list(outcome.patch) == []
    assert outcome.warnings == ()
    event = outcome.event(p, NS)
    assert event is not None
    assert (event.type, event.reason) == ("Normal", "InjectionDisabledByPod")
    assert event.message.startswith(f"Pod {NS}/chat-7d9f8c6b5-* is not injected: The pod opts")


def test_when_a_pod_asked_for_the_sidecar_and_runs_without_then_warnings_everywhere() -> None:
    p = pod(ENABLED, {constants.ANNOTATION_POLICY: "nope"})
    outcome = review(p)

    assert (outcome.decision, outcome.reason) == (metrics.SKIPPED, "annotated_policy_missing")
    (warning,) = outcome.warnings
    assert warning.startswith("aiguard: the pod is created without the sidecar")
    assert "(aiguard.dev/policy: nope)" in warning
    event = outcome.event(p, NS)
    assert event is not None
    assert (event.type, event.reason) == ("Warning", "AnnotatedPolicyMissing")
    assert event.ref.kind == "ReplicaSet"
    assert event.ref.uid == RS_OWNER["uid"]


def test_when_a_provider_secret_is_mounted_into_the_app_then_kubectl_is_warned() -> None:
    p = pod(
        ENABLED,
        volumes=[{"name": "keys", "secret": {"secretName": "openai-api-key"}}],
    )
    p["spec"]["containers"][0]["volumeMounts"] = [{"name": "keys", "mountPath": "/keys"}]

    outcome = review(p)

    assert outcome.injected
    (warning,) = outcome.warnings
    assert warning.startswith("aiguard: container app mounts Secret openai-api-key")
    event = outcome.event(p, NS)
    assert event is not None
    assert (event.type, event.reason) == ("Warning", admission.SECRET_EXPOSED)


def test_when_the_operator_cannot_decide_then_failure_policy_says_what_happens() -> None:
    ignored = admission.failed(admission.OPERATOR_STARTING, "Ignore")
    failed = admission.failed(admission.OPERATOR_STARTING, "Fail")

    assert (ignored.decision, ignored.reason, ignored.allowed) == (
        metrics.ERROR,
        "operator_starting",
        True,
    )
    assert ignored.warnings
    event = ignored.event(pod(ENABLED), NS)
    assert event is not None
    assert "was created without the aiguard sidecar" in event.message
    assert not failed.allowed
    assert failed.summary().startswith("rejected (failurePolicy Fail): operator_starting")
    assert failed.event(pod(ENABLED), NS) is None  # the creator's FailedCreate Event says it


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (pod(ENABLED), ("ReplicaSet", "chat-7d9f8c6b5")),
        (
            pod(ENABLED, owner={**RS_OWNER, "kind": "Job", "apiVersion": "batch/v1"}),
            ("Job", "chat-7d9f8c6b5"),
        ),
        (pod(ENABLED, name="bare", owner=None), ("Pod", "bare")),
        (pod(ENABLED, owner=None), None),
    ],
    ids=["replicaset", "job", "bare-pod", "unnamed-bare-pod"],
)
def test_events_go_to_the_controlling_owner_else_the_pod(
    p: dict[str, Any], expected: tuple[str, str] | None
) -> None:
    ref = admission.owner(p, NS)

    assert (None if ref is None else (ref.kind, ref.name)) == expected
    if ref is not None:
        assert ref.namespace == NS


def test_every_decision_has_a_metric_series() -> None:
    series = admission.metric_series()

    assert len(series) == len(set(series))
    assert {d for d, _ in series} == set(metrics.DECISIONS)
    assert ("skipped", "host_network") in series
    assert ("error", "operator_starting") in series
    codes = {r for _, r in series}
    assert {r.code for r in Skip.__dict__.values() if isinstance(r, injection.SkipReason)} <= codes


def test_review_does_not_modify_the_pod() -> None:
    p = pod(ENABLED)
    before = copy.deepcopy(p)

    review(p)

    assert p == before


def test_the_patch_is_what_the_api_server_gets() -> None:
    """The AdmissionResponse encoding: base64 of the JSON operations."""
    p = pod(ENABLED)
    outcome = review(p)
    encoded = base64.b64encode(json.dumps(list(outcome.patch)).encode()).decode()

    patched = jsonpatch.apply_patch(p, json.loads(base64.b64decode(encoded)))

    assert patched["spec"]["initContainers"][0]["name"] == constants.SIDECAR_CONTAINER_NAME
