"""Sidecar injection on the real control plane: what the API server and the controller manager
do with labelled workloads while the operator's pod webhooks run (or do not).

Every test works in its own namespace; every wait polls a condition with a deadline. Pods stay
Pending (no kubelet, no scheduler): what admission did is all there is to see.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiguard_api import constants
from tests.harness.cluster import Cluster
from tests.harness.devoperator import DevOperator
from tests.integration.test_policy_operator import CHAT, TIMEOUT, apply, get, wait_ready

pytestmark = pytest.mark.cluster

SIDECAR = constants.SIDECAR_CONTAINER_NAME
ENABLED = {constants.LABEL_INJECT: constants.INJECT_ENABLED}
CHAT_LABELS = {"app.kubernetes.io/name": "chat"}
PROVIDER_SECRET = "openai-api-key"  # CHAT's provider key
DEFAULT_IMAGE = "ghcr.io/aiguard/aiguard-sidecar:0.1.0"


# --------------------------------------------------------------------------- helpers


def bare_pod(
    name: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**CHAT_LABELS, **(labels or {})}}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.invalid/chat:1",
                    "env": [{"name": "LOG_LEVEL", "value": "debug"}],
                }
            ]
        },
    }


def template(labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    pod = bare_pod("unused", labels, annotations)
    del pod["metadata"]["name"], pod["apiVersion"], pod["kind"]
    return pod


def deployment(
    name: str,
    labels: dict[str, str],
    *,
    replicas: int = 2,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": name}},
            "template": template(
                {**labels, "app.kubernetes.io/instance": name}, annotations=annotations
            ),
        },
    }


def create(cluster: Cluster, ns: str, doc: dict[str, Any], *args: str) -> Any:
    """``kubectl create``; returns the completed process (stdout: the object as JSON)."""
    return cluster.kubectl(
        "create", "-n", ns, "-f", "-", "-o", "json", *args, input=json.dumps(doc), check=False
    )


def created(cluster: Cluster, ns: str, doc: dict[str, Any], *args: str) -> dict[str, Any]:
    result = create(cluster, ns, doc, *args)
    assert result.returncode == 0, result.stderr
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj


def pods(cluster: Cluster, ns: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", "pods", "-n", ns, "-l", selector)[
        "items"
    ]
    return items


def wait_pods(cluster: Cluster, ns: str, selector: str, count: int) -> list[dict[str, Any]]:
    return cluster.wait_for(
        lambda: found if len(found := pods(cluster, ns, selector)) >= count else None,
        TIMEOUT,
        interval=0.3,
        what=f"{count} pods {selector} in {ns}",
    )


def events(cluster: Cluster, ns: str, **fields: str) -> list[dict[str, Any]]:
    selector = ",".join(f"{k}={v}" for k, v in fields.items())
    args = ["get", "events", "-n", ns] + (["--field-selector", selector] if selector else [])
    items: list[dict[str, Any]] = cluster.kubectl_json(*args)["items"]
    return items


def wait_event(cluster: Cluster, ns: str, reason: str, **fields: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((e for e in events(cluster, ns, **fields) if e["reason"] == reason), None)

    return cluster.wait_for(found, TIMEOUT, interval=0.3, what=f"a {reason} Event in {ns}")


def containers(pod: dict[str, Any], key: str = "containers") -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"].get(key) or []}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def status_annotation(pod: dict[str, Any]) -> dict[str, Any] | None:
    raw = (pod["metadata"].get("annotations") or {}).get(constants.ANNOTATION_STATUS)
    return None if raw is None else dict(json.loads(raw))


def assert_untouched(pod: dict[str, Any]) -> None:
    assert SIDECAR not in containers(pod, "initContainers")
    assert not pod["spec"].get("initContainers")
    assert status_annotation(pod) is None
    assert "OPENAI_BASE_URL" not in env_of(containers(pod)["app"])
    assert not any(v["name"].startswith("aiguard-") for v in pod["spec"].get("volumes") or [])


def assert_injected(pod: dict[str, Any], *, policy: dict[str, Any]) -> None:
    """The pod carries the sidecar, the app env and the volumes of ``policy`` (a stored
    AIPolicy), and no app container can read the provider key."""
    init = pod["spec"]["initContainers"]
    sidecar = init[0]
    assert sidecar["name"] == SIDECAR
    assert sum(c["name"] == SIDECAR for c in init) == 1
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar
    assert sidecar["image"] == DEFAULT_IMAGE
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"]["port"] == constants.SIDECAR_ADMIN_PORT
    assert sidecar["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    cm_name = policy["status"]["configMap"]
    assert volumes["aiguard-policy"]["configMap"]["name"] == cm_name
    secret_volumes = {
        name
        for name, v in volumes.items()
        if v.get("secret", {}).get("secretName") == PROVIDER_SECRET
    }
    assert secret_volumes == {f"aiguard-secret-{PROVIDER_SECRET}"}
    assert "emptyDir" in volumes["aiguard-spool"]
    sidecar_mounts = {m["name"] for m in sidecar["volumeMounts"]}
    assert {
        "aiguard-policy",
        f"aiguard-secret-{PROVIDER_SECRET}",
        "aiguard-spool",
    } <= sidecar_mounts

    for name, app in containers(pod).items():
        mounts = {m["name"] for m in app.get("volumeMounts") or []}
        assert not mounts & secret_volumes, f"container {name} mounts the provider Secret"
        env = env_of(app)
        assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:15080/openai/v1"
        assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:15080/anthropic"
        assert env["AZURE_OPENAI_ENDPOINT"] == "http://127.0.0.1:15080/azure"
        assert env["OPENAI_API_KEY"] == constants.PLACEHOLDER_KEY
        assert not any(
            isinstance(v, dict) and v.get("secretKeyRef", {}).get("name") == PROVIDER_SECRET
            for v in env.values()
        )

    record = status_annotation(pod)
    assert record is not None
    assert record["policy"] == policy["metadata"]["name"]
    assert record["hash"] == policy["status"]["compiledHash"]
    assert record["sidecarVersion"] == "0.1.0"
    assert record["initContainers"] == [SIDECAR]


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a Prometheus exposition, None when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            head, _, value = line.rpartition(" ")
            got = head[len(name) :].strip("{}")
            if ",".join(sorted(got.split(","))) == want or (not want and not got):
                return float(value)
    return None


def decisions(operator: DevOperator, decision: str, reason: str) -> float:
    value = metric(
        operator.metrics(),
        "aiguard_injection_decisions_total",
        decision=decision,
        reason=reason,
    )
    return value or 0.0


def ready_chat(cluster: Cluster, ns: str) -> dict[str, Any]:
    apply(cluster, ns, CHAT)
    return wait_ready(cluster, ns, "chat")


@pytest.fixture
def chat_namespace(cluster: Cluster, policy_namespace: str) -> str:
    """A namespace with the example Secrets and the chat AIPolicy, compiled."""
    ready_chat(cluster, policy_namespace)
    return policy_namespace


@pytest.fixture
def operator_restored(operator: DevOperator) -> Iterator[DevOperator]:
    """The session's operator, running again after the test whatever the test stopped."""
    try:
        yield operator
    finally:
        if operator.proc is None:
            operator.start()


# --------------------------------------------------------------------------- the webhooks


def test_the_pod_webhooks_are_registered_safely(cluster: Cluster, operator: DevOperator) -> None:
    config = operator.webhook_configuration("mutating")
    assert config is not None
    hooks = {h["name"]: h for h in config["webhooks"]}

    assert set(hooks) == {"mutate-pods.namespace.aiguard.dev", "mutate-pods.object.aiguard.dev"}
    for hook in hooks.values():
        assert hook["failurePolicy"] == "Fail"
        assert hook["timeoutSeconds"] == 10
        assert hook["sideEffects"] == "NoneOnDryRun"
        assert hook["reinvocationPolicy"] == "Never"
        assert hook["rules"][0]["operations"] == ["CREATE"]
        (excluded, *_) = hook["namespaceSelector"]["matchExpressions"]
        assert excluded["operator"] == "NotIn"
        assert {"kube-system", "kube-public", "kube-node-lease"} <= set(excluded["values"])
        assert hook["clientConfig"]["url"].startswith(f"https://127.0.0.1:{operator.port}/")

    # The webhook is not even asked about a labelled pod in kube-system.
    pod = bare_pod("aiguard-test-kube-system", ENABLED)
    stored = created(cluster, "kube-system", pod, "--dry-run=server")
    assert_untouched(stored)


# --------------------------------------------------------------------------- injection


def test_a_labelled_deployments_pods_carry_the_sidecar_env_and_volumes(
    cluster: Cluster, chat_namespace: str, operator: DevOperator
) -> None:
    ns = chat_namespace
    policy = get(cluster, "aipolicy", "chat", ns)
    assert policy is not None
    before = decisions(operator, "injected", "selector")

    apply(cluster, ns, deployment("chat", {**CHAT_LABELS, **ENABLED}))

    found = wait_pods(cluster, ns, "app.kubernetes.io/instance=chat", 2)
    for pod in found:
        (owner,) = pod["metadata"]["ownerReferences"]
        assert owner["kind"] == "ReplicaSet"  # created by the controller manager
        assert_injected(pod, policy=policy)
        assert env_of(containers(pod)["app"])["LOG_LEVEL"] == "debug"  # the user's env stays
    cluster.wait_for(
        lambda: (
            (get(cluster, "aipolicy", "chat", ns) or {}).get("status", {}).get("coverage")
            == {"governedPods": 2, "injectedPods": 2, "uninjectedPods": []}
        ),
        TIMEOUT,
        interval=0.3,
        what="the coverage of chat: 2 of 2 injected",
    )
    assert decisions(operator, "injected", "selector") >= before + 2


def test_namespace_level_opt_in_injects_pods_that_do_not_opt_out(
    cluster: Cluster, chat_namespace: str
) -> None:
    ns = chat_namespace
    cluster.kubectl("label", "namespace", ns, f"{constants.LABEL_NS_INJECTION}=enabled")
    policy = get(cluster, "aipolicy", "chat", ns)
    assert policy is not None

    plain = created(cluster, ns, bare_pod("chat-plain"))
    by_label = created(cluster, ns, bare_pod("chat-out", {constants.LABEL_INJECT: "disabled"}))
    by_annotation = created(
        cluster, ns, bare_pod("chat-out-2", annotations={constants.ANNOTATION_INJECT: "disabled"})
    )

    assert_injected(plain, policy=policy)
    assert_untouched(by_label)
    assert_untouched(by_annotation)
    event = wait_event(
        cluster, ns, "InjectionDisabledByPod", **{"involvedObject.name": "chat-out-2"}
    )
    assert event["type"] == "Normal"
    assert "by annotation" in event["message"]


def test_an_opted_out_pod_and_an_unlabelled_pod_are_untouched_and_never_reach_the_webhook(
    cluster: Cluster, chat_namespace: str, operator: DevOperator
) -> None:
    ns = chat_namespace
    admissions = "aiguard_admission_duration_seconds_count"
    before = metric(operator.metrics(), admissions, webhook="object")

    unlabelled = created(cluster, ns, bare_pod("chat-unlabelled"))
    opted_out = created(cluster, ns, bare_pod("chat-out", {constants.LABEL_INJECT: "disabled"}))

    assert_untouched(unlabelled)
    assert_untouched(opted_out)
    assert metric(operator.metrics(), admissions, webhook="object") == before
    assert events(cluster, ns, **{"involvedObject.name": "chat-out"}) == []


def test_a_pod_injected_once_is_not_injected_again(cluster: Cluster, chat_namespace: str) -> None:
    ns = chat_namespace
    first = created(cluster, ns, bare_pod("chat-0", ENABLED))
    copied = copy.deepcopy(first)
    copied["metadata"] = {
        "name": "chat-copy",
        "labels": first["metadata"]["labels"],
        "annotations": first["metadata"]["annotations"],
    }
    copied.pop("status", None)

    again = created(cluster, ns, copied)
    renamed = {**copied, "metadata": {**copied["metadata"], "name": "chat-copy-2"}}
    dry_run = created(cluster, ns, renamed, "--dry-run=server")

    for pod in (again, dry_run):
        assert [c["name"] for c in pod["spec"]["initContainers"]] == [SIDECAR]
        assert pod["spec"]["volumes"] == first["spec"]["volumes"]
        assert pod["spec"]["containers"] == first["spec"]["containers"]
        assert status_annotation(pod) == status_annotation(first)
    skipped = wait_event(cluster, ns, "AlreadyInjected", **{"involvedObject.name": "chat-copy"})
    assert skipped["type"] == "Normal"


def test_a_dry_run_is_injected_like_the_real_thing_and_leaves_no_trace(
    cluster: Cluster, chat_namespace: str, operator: DevOperator
) -> None:
    ns = chat_namespace
    policy = get(cluster, "aipolicy", "chat", ns)
    assert policy is not None
    before = decisions(operator, "injected", "selector")

    pod = created(cluster, ns, bare_pod("chat-dry", ENABLED), "--dry-run=server")

    assert_injected(pod, policy=policy)
    assert get(cluster, "pod", "chat-dry", ns) is None
    assert decisions(operator, "injected", "selector") == before


def test_a_jobs_pods_are_injected(cluster: Cluster, chat_namespace: str) -> None:
    ns = chat_namespace
    policy = get(cluster, "aipolicy", "chat", ns)
    assert policy is not None
    spec = template({**CHAT_LABELS, **ENABLED})
    spec["spec"]["restartPolicy"] = "Never"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "nightly"},
        "spec": {"backoffLimit": 0, "template": spec},
    }

    apply(cluster, ns, job)

    (pod,) = wait_pods(cluster, ns, "job-name=nightly", 1)
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert_injected(pod, policy=policy)


def test_a_provider_secret_mounted_into_the_app_is_warned_about(
    cluster: Cluster, chat_namespace: str
) -> None:
    ns = chat_namespace
    pod = bare_pod("chat-keys", ENABLED)
    pod["spec"]["volumes"] = [{"name": "keys", "secret": {"secretName": PROVIDER_SECRET}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "keys", "mountPath": "/keys"}]

    result = create(cluster, ns, pod)

    assert result.returncode == 0, result.stderr
    assert (
        f"Warning: aiguard: container app mounts Secret {PROVIDER_SECRET} (volume keys)"
        in result.stderr
    )
    assert json.loads(result.stdout)["spec"]["initContainers"][0]["name"] == SIDECAR
    event = wait_event(cluster, ns, "ProviderSecretExposed", **{"involvedObject.name": "chat-keys"})
    assert event["type"] == "Warning"


# --------------------------------------------------------------------------- skips explained


def test_a_pod_naming_a_missing_policy_is_created_without_the_sidecar_and_told_why(
    cluster: Cluster, chat_namespace: str, operator: DevOperator
) -> None:
    ns = chat_namespace
    before = decisions(operator, "skipped", "annotated_policy_missing")
    pod = bare_pod("chat-lost", ENABLED, {constants.ANNOTATION_POLICY: "no-such-policy"})

    result = create(cluster, ns, pod)

    assert result.returncode == 0, result.stderr
    assert_untouched(json.loads(result.stdout))
    assert (
        "Warning: aiguard: the pod is created without the sidecar (annotated_policy_missing)"
        in (result.stderr)
    )
    event = wait_event(
        cluster, ns, "AnnotatedPolicyMissing", **{"involvedObject.name": "chat-lost"}
    )
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Pod"
    assert "aiguard.dev/policy: no-such-policy" in event["message"]
    assert decisions(operator, "skipped", "annotated_policy_missing") == before + 1


def test_a_rollout_of_skipped_pods_makes_one_event_on_the_replicaset(
    cluster: Cluster, chat_namespace: str
) -> None:
    ns = chat_namespace
    replicas = 6
    apply(
        cluster,
        ns,
        deployment(
            "lost",
            {**CHAT_LABELS, **ENABLED},
            replicas=replicas,
            annotations={constants.ANNOTATION_POLICY: "no-such-policy"},
        ),
    )
    for pod in wait_pods(cluster, ns, "app.kubernetes.io/instance=lost", replicas):
        assert_untouched(pod)

    def counted() -> list[dict[str, Any]] | None:
        found = [e for e in events(cluster, ns) if e["reason"] == "AnnotatedPolicyMissing"]
        return found if found and sum(e.get("count") or 1 for e in found) >= replicas else None

    found = cluster.wait_for(counted, TIMEOUT, interval=0.5, what="the aggregated Event")
    (event,) = found
    assert event["involvedObject"]["kind"] == "ReplicaSet"
    assert event["involvedObject"]["uid"]
    assert event["count"] == replicas
    assert event["type"] == "Warning"


# --------------------------------------------------------------------------- webhook down


def test_with_the_webhook_down_and_failure_policy_ignore_the_pod_runs_uninjected_and_is_reported(
    cluster: Cluster,
    chat_namespace: str,
    operator_restored: DevOperator,
    tmp_path: Path,
) -> None:
    ns = chat_namespace
    operator = operator_restored
    operator.stop()
    with DevOperator(
        cluster, tmp_path / "ignore", env={"AIGUARD_INJECTION_FAILURE_POLICY": "Ignore"}
    ) as ignoring:
        config = ignoring.webhook_configuration("mutating")
        assert config is not None
        assert {h["failurePolicy"] for h in config["webhooks"]} == {"Ignore"}
    # stopped: the pod webhooks stay registered (persistent), pointing at nothing

    result = create(cluster, ns, bare_pod("chat-gap", ENABLED))

    assert result.returncode == 0, result.stderr
    assert_untouched(json.loads(result.stdout))

    operator.start()

    def reported() -> dict[str, Any] | None:
        obj = get(cluster, "aipolicy", "chat", ns) or {}
        cov = obj.get("status", {}).get("coverage") or {}
        return cov if cov.get("uninjectedPods") == ["chat-gap"] else None

    cov = cluster.wait_for(reported, TIMEOUT, interval=0.3, what="chat-gap in the status")
    assert (cov["governedPods"], cov["injectedPods"]) == (1, 0)
    cluster.wait_for(
        lambda: (
            metric(operator.metrics(), "aiguard_uninjected_pods", namespace=ns, policy="chat") == 1
        ),
        TIMEOUT,
        interval=0.3,
        what="aiguard_uninjected_pods = 1",
    )
    event = wait_event(cluster, ns, "UninjectedPods", **{"involvedObject.name": "chat"})
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "AIPolicy"
    assert "chat-gap (sidecar_missing)" in event["message"]

    # Recreating the pod fixes it, and coverage says so.
    cluster.kubectl("delete", "pod", "chat-gap", "-n", ns, "--wait=false")
    policy = get(cluster, "aipolicy", "chat", ns)
    assert policy is not None
    assert_injected(created(cluster, ns, bare_pod("chat-fixed", ENABLED)), policy=policy)
    cluster.wait_for(
        lambda: (
            metric(operator.metrics(), "aiguard_uninjected_pods", namespace=ns, policy="chat") == 0
        ),
        TIMEOUT,
        interval=0.3,
        what="aiguard_uninjected_pods = 0",
    )


def test_with_the_webhook_down_and_failure_policy_fail_labelled_pods_are_rejected(
    cluster: Cluster, chat_namespace: str, operator_restored: DevOperator
) -> None:
    ns = chat_namespace
    operator = operator_restored
    config = operator.webhook_configuration("mutating")
    assert config is not None
    assert {h["failurePolicy"] for h in config["webhooks"]} == {"Fail"}
    operator.stop()

    rejected = create(cluster, ns, bare_pod("chat-blocked", ENABLED))
    unlabelled = create(cluster, ns, bare_pod("chat-other"))

    assert rejected.returncode != 0
    assert re.search(
        r'failed calling webhook "mutate-pods\.object\.aiguard\.dev"', rejected.stderr
    ), rejected.stderr
    assert get(cluster, "pod", "chat-blocked", ns) is None
    assert unlabelled.returncode == 0, unlabelled.stderr  # other pods are never blocked
