"""The AIPolicy operator on the real control plane: what a platform engineer sees with kubectl.

Every test works in its own namespace; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiguard_api.config import compile_policy
from aiguard_api.policy import AIPolicy
from tests.harness.cluster import Cluster
from tests.harness.devoperator import DevOperator

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "policies"
EXAMPLE_NAMES = ["audit-rollout", "multi-provider-failover", "soc2-baseline", "strict-pii"]
TIMEOUT = 60.0

CHAT: dict[str, Any] = {
    "apiVersion": "aiguard.dev/v1alpha1",
    "kind": "AIPolicy",
    "metadata": {"name": "chat"},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/name": "chat"}},
        "providers": [
            {
                "name": "openai",
                "type": "openai",
                "baseURL": "https://api.openai.com/v1",
                "apiKeySecretRef": {"name": "openai-api-key"},
            }
        ],
        "routes": [{"name": "chat", "models": ["gpt-4o*"], "targets": [{"provider": "openai"}]}],
        "access": {"rules": [{"name": "all", "subjects": {"allAuthenticated": True}}]},
    },
}


# --------------------------------------------------------------------------- helpers


def apply(cluster: Cluster, ns: str, doc: dict[str, Any], check: bool = True) -> Any:
    return cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc), check=check)


def get(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == ctype:
            return dict(cond)
    return None


def wait_ready(cluster: Cluster, ns: str, name: str, *, generation: int = 1) -> dict[str, Any]:
    """The policy once Ready=True for ``generation``."""

    def ready() -> dict[str, Any] | None:
        obj = get(cluster, "aipolicy", name, ns)
        if obj is None or obj.get("status", {}).get("observedGeneration") != generation:
            return None
        cond = condition(obj, "Ready")
        return obj if cond and cond["status"] == "True" else None

    return cluster.wait_for(ready, TIMEOUT, what=f"AIPolicy {ns}/{name} Ready at gen {generation}")


def wait_condition(
    cluster: Cluster, ns: str, name: str, ctype: str, status: str, reason: str | None = None
) -> dict[str, Any]:
    def matches() -> dict[str, Any] | None:
        obj = get(cluster, "aipolicy", name, ns)
        cond = condition(obj, ctype) if obj else None
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return obj
        return None

    return cluster.wait_for(matches, TIMEOUT, what=f"{ctype}={status} on {ns}/{name}")


def configmap(cluster: Cluster, ns: str, policy: str) -> dict[str, Any] | None:
    return get(cluster, "configmap", f"aiguard-policy-{policy}", ns)


def events(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return items


def rejected(cluster: Cluster, ns: str, doc: dict[str, Any]) -> str:
    """kubectl apply's error output for a manifest the API server must refuse."""
    result = apply(cluster, ns, doc, check=False)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    return str(result.stderr)


# --------------------------------------------------------------------------- examples


def test_examples_apply_and_every_policy_becomes_ready(
    cluster: Cluster, policy_namespace: str
) -> None:
    ns = policy_namespace

    result = cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES))

    for name in EXAMPLE_NAMES:
        assert f"aipolicy.aiguard.dev/{name} created" in result.stdout
    assert "Warning" not in result.stderr  # disjoint selectors, access rules present
    cluster.kubectl(
        "wait", "--for=condition=Ready", "aipolicy", "--all", "-n", ns, f"--timeout={TIMEOUT:g}s"
    )
    table = cluster.kubectl("get", "aip", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODE", "READY", "PODS", "INJECTED", "AGE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert set(rows) == set(EXAMPLE_NAMES)
    for name, row in rows.items():
        assert row[2:5] == ["True", "0", "0"], row
        assert row[1] == ("audit" if name == "audit-rollout" else "enforce")


def test_compiled_configmap_equals_compile_policy_of_the_stored_policy(
    cluster: Cluster, policy_namespace: str
) -> None:
    ns = policy_namespace
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES))

    for name in EXAMPLE_NAMES:
        obj = wait_ready(cluster, ns, name)
        expected = compile_policy(AIPolicy.model_validate(obj))
        cm = configmap(cluster, ns, name)

        assert cm is not None
        assert cm["data"] == {"config.json": expected.to_json()}
        assert cm["metadata"]["annotations"]["aiguard.dev/compiled-hash"] == expected.hash
        assert obj["status"]["compiledHash"] == expected.hash
        assert obj["status"]["configMap"] == f"aiguard-policy-{name}"
        (owner,) = cm["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "AIPolicy",
            obj["metadata"]["uid"],
            True,
        )
        created = [e for e in events(cluster, ns, name) if e["reason"] == "ConfigMapCreated"]
        assert created
        assert expected.hash in created[0]["message"]


def test_kubectl_aiguard_status_lists_the_policies(cluster: Cluster, policy_namespace: str) -> None:
    ns = policy_namespace
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "strict-pii.yaml"))
    obj = wait_ready(cluster, ns, "strict-pii")

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiguard_operator.cli",
            "status",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "-n",
            ns,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    (row,) = json.loads(result.stdout)
    assert (row["name"], row["ready"], row["mode"]) == ("strict-pii", "True", "enforce")
    assert row["compiled_hash"] == obj["status"]["compiledHash"]
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiguard_operator.cli",
            "status",
            "-A",
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert any(
        line.split()[:4] == [ns, "strict-pii", "enforce", "True"] for line in table.splitlines()
    )


def test_governed_pods_are_counted(cluster: Cluster, policy_namespace: str) -> None:
    ns = policy_namespace
    apply(cluster, ns, CHAT)
    wait_ready(cluster, ns, "chat")

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "chat-0",
            "labels": {"app.kubernetes.io/name": "chat", "aiguard.dev/inject": "enabled"},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/chat:1"}]},
    }
    apply(cluster, ns, pod)

    def counted() -> bool:
        obj = get(cluster, "aipolicy", "chat", ns)
        return bool(obj and obj["status"].get("coverage", {}).get("governedPods") == 1)

    cluster.wait_for(counted, TIMEOUT, what="the pod counted under the policy")
    row = cluster.kubectl("get", "aip", "chat", "-n", ns, "--no-headers").stdout.split()
    assert row[3] == "1"


# --------------------------------------------------------------------------- lifecycle


def test_editing_a_policy_recompiles_it_and_bumps_observed_generation(
    cluster: Cluster, policy_namespace: str
) -> None:
    ns = policy_namespace
    apply(cluster, ns, CHAT)
    before = wait_ready(cluster, ns, "chat")
    ready_before = condition(before, "Ready")

    cluster.kubectl(
        "patch", "aip", "chat", "-n", ns, "--type=merge", "-p", '{"spec":{"mode":"audit"}}'
    )

    after = wait_ready(cluster, ns, "chat", generation=2)
    cm = configmap(cluster, ns, "chat")
    assert cm is not None
    compiled = json.loads(cm["data"]["config.json"])
    assert compiled["spec"]["mode"] == "audit"
    assert compiled["policy"]["generation"] == 2
    assert after["status"]["compiledHash"] == compiled["hash"] != before["status"]["compiledHash"]
    assert cm["metadata"]["annotations"]["aiguard.dev/policy-generation"] == "2"
    ready_after = condition(after, "Ready")
    assert ready_before
    assert ready_after
    assert ready_after["observedGeneration"] == 2
    assert ready_after["lastTransitionTime"] == ready_before["lastTransitionTime"]  # still True
    assert any(e["reason"] == "ConfigMapUpdated" for e in events(cluster, ns, "chat"))


def test_deleting_a_policy_removes_its_configmap(cluster: Cluster, policy_namespace: str) -> None:
    ns = policy_namespace
    apply(cluster, ns, CHAT)
    wait_ready(cluster, ns, "chat")

    cluster.kubectl("delete", "aip", "chat", "-n", ns, f"--timeout={TIMEOUT:g}s")

    cluster.wait_for(
        lambda: configmap(cluster, ns, "chat") is None, TIMEOUT, what="the ConfigMap deleted"
    )


# --------------------------------------------------------------------------- admission


def _with(change: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(CHAT)
    doc["spec"].update(change)
    return doc


INVALID = [
    pytest.param(
        _with({"mode": "enforced"}),
        ['spec.mode: Unsupported value: "enforced"', '"enforce", "audit"'],
        id="bad-enum",
    ),
    pytest.param(
        _with(
            {
                "guardrails": {
                    "input": {
                        "pii": {"customPatterns": [{"entity": "EMP_ID", "regex": "EMP-([0-9]+"}]}
                    }
                }
            }
        ),
        [
            'admission webhook "validate-policy.aiguard.dev" denied the request',
            'AIPolicy "chat" is invalid (1 problem)',
            "spec.guardrails.input.pii.customPatterns[0].regex: regex 'EMP-([0-9]+' does not "
            "compile: missing ), unterminated subpattern",
        ],
        id="bad-regex",
    ),
    pytest.param(
        _with({"guardrails": {"input": {"deny": {"patterns": [r"secret(?=\s)"]}}}}),
        ["spec.guardrails.input.deny.patterns[0]", "uses a lookahead (?=...)", "RE2"],
        id="regex-re2-cannot-run",
    ),
    pytest.param(
        _with({"routes": [{"name": "chat", "models": ["*"], "targets": [{"provider": "azure"}]}]}),
        ["every route target must name a provider defined in spec.providers"],
        id="unknown-provider",
    ),
    pytest.param(
        _with(
            {
                "providers": [
                    {
                        "name": "openai",
                        "type": "openai",
                        "baseURL": "https://api.openai.com/v1",
                        "apiKeySecretRef": {"name": "openai-prod-key"},
                    }
                ]
            }
        ),
        [
            'admission webhook "validate-policy.aiguard.dev" denied the request',
            'spec.providers[openai].apiKeySecretRef: Secret "openai-prod-key" not found in '
            'namespace "NS"; create it first, e.g. kubectl create secret generic '
            "openai-prod-key -n NS --from-literal=api-key=...",
        ],
        id="missing-secret",
    ),
    pytest.param(
        _with({"audit": {"hashKeySecretRef": {"name": "aiguard-hash-keys", "key": "hmac"}}}),
        ['Secret "aiguard-hash-keys" in namespace "NS" has no key "hmac" (it has: audit, pii)'],
        id="missing-secret-key",
    ),
]


@pytest.mark.parametrize(("doc", "messages"), INVALID)
def test_invalid_policy_is_rejected_and_the_last_good_config_stays(
    cluster: Cluster, policy_namespace: str, doc: dict[str, Any], messages: list[str]
) -> None:
    ns = policy_namespace
    apply(cluster, ns, CHAT)
    good = wait_ready(cluster, ns, "chat")
    good_cm = configmap(cluster, ns, "chat")

    error = rejected(cluster, ns, doc)

    for message in messages:
        assert message.replace("NS", ns) in error
    # nothing changed: the policy, its status and its compiled config
    now = get(cluster, "aipolicy", "chat", ns)
    assert now is not None
    assert now["metadata"]["generation"] == good["metadata"]["generation"]
    assert now["status"]["compiledHash"] == good["status"]["compiledHash"]
    assert configmap(cluster, ns, "chat") == good_cm


def test_invalid_new_policy_is_never_stored(cluster: Cluster, policy_namespace: str) -> None:
    ns = policy_namespace
    doc = _with({"guardrails": {"output": {"deny": {"patterns": ["(unclosed"]}}}})

    rejected(cluster, ns, doc)

    assert get(cluster, "aipolicy", "chat", ns) is None
    assert configmap(cluster, ns, "chat") is None


def test_a_second_policy_selecting_every_pod_is_rejected(
    cluster: Cluster, policy_namespace: str
) -> None:
    ns = policy_namespace
    first = _with({"selector": {}})
    apply(cluster, ns, first)
    wait_ready(cluster, ns, "chat")
    second = copy.deepcopy(first)
    second["metadata"]["name"] = "chat-2"

    error = rejected(cluster, ns, second)

    assert f'AIPolicy "chat" already selects every pod in namespace "{ns}"' in error


def test_overlapping_selectors_warn_in_kubectl_and_in_both_policies(
    cluster: Cluster, policy_namespace: str
) -> None:
    ns = policy_namespace
    apply(cluster, ns, CHAT)
    wait_ready(cluster, ns, "chat")
    team = _with({"selector": {"matchLabels": {"team": "support"}}})
    team["metadata"]["name"] = "support"

    result = apply(cluster, ns, team)

    assert 'Warning: spec.selector: overlaps with AIPolicy "chat"' in result.stderr
    assert "app.kubernetes.io/name=chat,team=support matches both" in result.stderr
    for name, other in (("support", "chat"), ("chat", "support")):
        obj = wait_condition(cluster, ns, name, "SelectorOverlap", "True")
        cond = condition(obj, "SelectorOverlap")
        assert cond
        assert f'AIPolicy "{other}"' in cond["message"]
        ready = condition(obj, "Ready")
        assert ready
        assert ready["status"] == "True"

    cluster.kubectl("delete", "aip", "support", "-n", ns)

    wait_condition(cluster, ns, "chat", "SelectorOverlap", "False")


def test_the_webhook_never_applies_to_kube_system(cluster: Cluster, operator: DevOperator) -> None:
    config = operator.webhook_configuration()
    assert config is not None
    (hook,) = [h for h in config["webhooks"] if h["name"] == "validate-policy.aiguard.dev"]
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name"
    assert expr["operator"] == "NotIn"
    assert "kube-system" in expr["values"]
    assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:")

    # A policy the webhook would reject is stored in kube-system: the webhook was not asked.
    doc = _with({"guardrails": {"input": {"deny": {"patterns": ["(unclosed"]}}}})
    doc["metadata"]["name"] = "aiguard-test-unvalidated"
    result = cluster.kubectl(
        "create", "--dry-run=server", "-n", "kube-system", "-f", "-", input=json.dumps(doc)
    )
    assert "created (server dry run)" in result.stdout


# --------------------------------------------------------------------------- restarts


def test_restart_is_idempotent_and_a_deleted_secret_marks_the_policy_invalid_until_restored(
    cluster: Cluster, policy_namespace: str, operator: DevOperator
) -> None:
    ns = policy_namespace
    apply(cluster, ns, CHAT)
    wait_ready(cluster, ns, "chat")
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "soc2-baseline.yaml"))
    baseline = wait_ready(cluster, ns, "soc2-baseline")
    baseline_cm = configmap(cluster, ns, "soc2-baseline")
    secret = get(cluster, "secret", "aiguard-hash-keys", ns)
    assert secret is not None

    operator.stop()
    try:
        cluster.kubectl("delete", "secret", "aiguard-hash-keys", "-n", ns)
    finally:
        operator.start()

    # soc2-baseline reads aiguard-hash-keys: Invalid, but its last good config stays.
    obj = wait_condition(cluster, ns, "soc2-baseline", "Ready", "False", "SecretNotFound")
    ready = condition(obj, "Ready")
    assert ready
    assert 'Secret "aiguard-hash-keys" not found' in ready["message"]
    assert (
        "The last valid config stays in ConfigMap aiguard-policy-soc2-baseline"
        in (ready["message"])
    )
    assert configmap(cluster, ns, "soc2-baseline") == baseline_cm
    assert any(e["reason"] == "SecretNotFound" for e in events(cluster, ns, "soc2-baseline"))
    # chat was resumed without a single write to its ConfigMap
    chat_cm = configmap(cluster, ns, "chat")
    assert chat_cm is not None
    chat = wait_ready(cluster, ns, "chat")
    assert (
        chat["status"]["compiledHash"]
        == chat_cm["metadata"]["annotations"]["aiguard.dev/compiled-hash"]
    )

    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        secret["metadata"].pop(key, None)
    apply(cluster, ns, secret)

    restored = wait_ready(cluster, ns, "soc2-baseline")
    assert restored["status"]["compiledHash"] == baseline["status"]["compiledHash"]
    assert configmap(cluster, ns, "soc2-baseline") == baseline_cm
