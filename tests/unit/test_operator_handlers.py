"""handlers.py pieces that need no cluster: kopf's managed webhooks skip system namespaces
and the pod webhooks get their selectors; kopf answers with the precomputed patch."""

from __future__ import annotations

import base64
import copy
import json
import logging
from typing import Any, Literal, cast

import jsonpatch
import kopf
import pytest
from kopf._cogs.structs import references
from kopf._core.engines import admission
from kopf._core.intents import causes, registries

from aiguard_api.policy import LabelSelector
from aiguard_operator import admission as aiguard_admission
from aiguard_operator import handlers, injection


def test_namespace_selector_excludes_the_given_namespaces() -> None:
    assert handlers.webhook_namespace_selector(["kube-system", "aiguard", "kube-system"]) == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["aiguard", "kube-system"],
            }
        ]
    }


def test_kopf_managed_webhooks_get_the_namespace_selector(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_build(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return [{"name": "validate-policy.aiguard.dev"}, {"name": "mutate.aiguard.dev"}]

    monkeypatch.setattr(admission, "build_webhooks", fake_build)

    handlers._exclude_namespaces(["kube-system"])
    handlers._exclude_namespaces(["kube-system", "kube-public"])  # re-wraps the original only
    hooks = admission.build_webhooks([], resources=[], name_suffix="x", client_config={})

    expected = handlers.webhook_namespace_selector(["kube-system", "kube-public"])
    assert [h["namespaceSelector"] for h in hooks] == [expected, expected]
    assert admission.build_webhooks.__wrapped__ is fake_build  # type: ignore[attr-defined]


def test_without_kopfs_builder_the_operator_refuses_to_manage_webhooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(admission, "build_webhooks")

    with pytest.raises(RuntimeError, match="cannot exclude kube-system"):
        handlers._exclude_namespaces(["kube-system"])


def test_real_kopf_builder_output_passes_through_the_wrapper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "build_webhooks", admission.build_webhooks)
    handlers._exclude_namespaces(["kube-system"])

    hooks = admission.build_webhooks(
        [], resources=[], name_suffix="aiguard.dev", client_config={"url": "https://x"}
    )

    assert hooks == []  # no handlers given: nothing to register, and no crash


# --------------------------------------------------------------------------- pod injection

PODS = references.Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
POLICIES = references.Resource(
    group="aiguard.dev", version="v1alpha1", plural="aipolicies", kind="AIPolicy", namespaced=True
)


def pod_hooks(failure_policy: Literal["Fail", "Ignore"] = "Fail") -> dict[str, dict[str, Any]]:
    return aiguard_admission.pod_webhooks(
        excluded=["kube-system"], failure_policy=failure_policy, timeout_seconds=7
    )


@pytest.mark.parametrize("persistent_only", [False, True], ids=["running", "after-stop"])
def test_the_pod_webhooks_kopf_registers_get_their_selectors_and_failure_policy(
    monkeypatch: pytest.MonkeyPatch, persistent_only: bool
) -> None:
    monkeypatch.setattr(admission, "build_webhooks", admission.build_webhooks)
    handlers._exclude_namespaces(["kube-system"], pod_hooks("Ignore"))
    registered = registries.get_default_registry()._webhooks.get_all_handlers()
    mutating = [h for h in registered if h.reason == causes.WebhookType.MUTATING]

    hooks = admission.build_webhooks(
        mutating,
        resources=[PODS, POLICIES],
        name_suffix="aiguard.dev",
        client_config={"url": "https://127.0.0.1:9443"},
        persistent_only=persistent_only,
    )

    # persistent: kopf leaves them registered when the operator stops, so a stopped operator
    # means what failurePolicy says (and not: no webhook, no sidecar)
    by_name = {h["name"]: h for h in hooks}
    assert set(by_name) == {"mutate-pods.namespace.aiguard.dev", "mutate-pods.object.aiguard.dev"}
    for hook_id, fields in pod_hooks("Ignore").items():
        hook = by_name[handlers.webhook_name(hook_id, "aiguard.dev")]
        assert hook["clientConfig"]["url"] == f"https://127.0.0.1:9443/{hook_id}"
        assert hook["rules"] == [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "operations": ["CREATE"],
                "scope": "*",
            }
        ]
        assert hook["sideEffects"] == "NoneOnDryRun"
        assert hook["failurePolicy"] == "Ignore"
        assert hook["timeoutSeconds"] == 7
        assert hook["namespaceSelector"] == fields["namespaceSelector"]
        assert hook["objectSelector"] == fields["objectSelector"]


def test_the_validating_webhook_keeps_the_plain_namespace_selector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "build_webhooks", admission.build_webhooks)
    handlers._exclude_namespaces(["kube-system"], pod_hooks())
    registered = registries.get_default_registry()._webhooks.get_all_handlers()
    validating = [h for h in registered if h.reason == causes.WebhookType.VALIDATING]

    (hook,) = admission.build_webhooks(
        validating,
        resources=[PODS, POLICIES],
        name_suffix="aiguard.dev",
        client_config={"url": "https://x"},
    )

    assert hook["name"] == "validate-policy.aiguard.dev"
    assert hook["namespaceSelector"] == handlers.webhook_namespace_selector(["kube-system"])
    assert "objectSelector" not in hook or hook["objectSelector"] is None


POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "generateName": "chat-",
        "namespace": "team-a",
        "labels": {"app": "chat", "aiguard.dev/inject": "enabled"},
    },
    "spec": {
        "containers": [{"name": "app", "image": "chat:1", "env": [{"name": "A", "value": "1"}]}]
    },
}
POLICY = injection.PolicyInfo(
    name="chat",
    selector=LabelSelector(match_labels={"app": "chat"}),
    compiled_hash="sha256:" + "cd" * 32,
    configmap="aiguard-policy-chat",
    ready=True,
)
SIDECAR = injection.SidecarSettings(image="ghcr.io/aiguard/aiguard-sidecar:0.1.0", version="0.1.0")


def answered_patch(jsonpatch_ops: Any) -> list[dict[str, Any]]:
    """The JSON Patch as kopf puts it into the AdmissionResponse."""
    response = admission.build_response(
        request={"apiVersion": "admission.k8s.io/v1", "request": {"uid": "u"}},  # type: ignore[typeddict-item]
        outcomes={},
        warnings=[],
        jsonpatch=jsonpatch_ops,
    )
    encoded = response["response"].get("patch")
    assert encoded
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(encoded))
    return ops


@pytest.mark.parametrize("path", ["precomputed", "kopf-diff"])
def test_kopf_answers_with_the_injected_pod_either_way(path: str) -> None:
    """kopf asks the Patch for its operations: they are the precomputed ones. Were a kopf
    version to diff ``patch.fns`` itself instead, the pod it sends is the same."""
    outcome = aiguard_admission.review(
        copy.deepcopy(POD),
        namespace="team-a",
        namespace_labels={},
        policies=[POLICY],
        settings=SIDECAR,
        operator_namespace="aiguard-system",
    )
    patch = kopf.Patch(body=kopf.Body(cast(Any, copy.deepcopy(POD))))

    handlers._answer_with(patch, outcome)

    if path == "precomputed":
        ops = answered_patch(patch.as_json_patch())
        assert ops == json.loads(json.dumps(list(outcome.patch)))
    else:
        ops = answered_patch(kopf.Patch.as_json_patch(patch))  # kopf's own diff of patch.fns
    assert outcome.plan is not None
    assert jsonpatch.apply_patch(POD, ops) == injection.inject(POD, outcome.plan)


def test_a_skip_is_answered_without_a_patch_and_without_kopfs_copy_of_the_pod() -> None:
    opted_out = copy.deepcopy(POD)
    opted_out["metadata"]["annotations"] = {"aiguard.dev/inject": "disabled"}
    outcome = aiguard_admission.review(
        opted_out,
        namespace="team-a",
        namespace_labels={},
        policies=[POLICY],
        settings=SIDECAR,
        operator_namespace="aiguard-system",
    )
    patch = kopf.Patch(body=kopf.Body(cast(Any, opted_out)))

    handlers._answer_with(patch, outcome)

    assert patch.as_json_patch() == []
    assert patch.fns == []
    assert kopf.Patch.as_json_patch(patch) == []


def test_per_admission_success_lines_of_kopf_are_dropped() -> None:
    log_filter = handlers._OperatorLogFilter()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)

    assert not log_filter.filter(record("Webhook 'mutate-pods/object' succeeded."))
    assert not log_filter.filter(record("Webhook 'mutate-pods/namespace' succeeded."))
    assert not log_filter.filter(record("Handler 'namespace-changed' succeeded."))
    assert log_filter.filter(record("Handler 'reconcile' succeeded."))


def test_a_namespaced_operator_restricts_the_pod_webhooks_only_to_plain_names() -> None:
    assert handlers._watched_names(["team-a", "team-b"]) == ["team-a", "team-b"]
    assert handlers._watched_names(["team-*"]) == []
    assert handlers._watched_names(["team-a", "!team-b"]) == []
    assert handlers._watched_names([]) == []
