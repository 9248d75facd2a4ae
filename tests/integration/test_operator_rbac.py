"""The operator works with exactly the rules in docs/operator-rbac.md, under a ServiceAccount.

The ClusterRole is read from the document itself, bound to a fresh ServiceAccount, and the
operator runs with that account's token while the session's (admin) operator is stopped.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.cluster import Cluster
from tests.harness.devoperator import DevOperator
from tests.integration.test_policy_operator import (
    CHAT,
    TIMEOUT,
    apply,
    configmap,
    get,
    rejected,
    wait_ready,
)

pytestmark = pytest.mark.cluster

DOC = Path(__file__).resolve().parents[2] / "docs" / "operator-rbac.md"


def documented_cluster_role() -> dict[str, Any]:
    (block,) = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    role: dict[str, Any] = yaml.safe_load(block)
    assert role["kind"] == "ClusterRole"
    return role


@pytest.fixture
def restricted_kubeconfig(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A kubeconfig with the token of a ServiceAccount bound only to the documented role."""
    suffix = uuid.uuid4().hex[:8]
    sa_ns, role_name = f"aiguard-system-{suffix}", f"aiguard-operator-{suffix}"
    role = documented_cluster_role()
    role["metadata"]["name"] = role_name
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": role_name},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role_name,
        },
        "subjects": [{"kind": "ServiceAccount", "name": "aiguard-operator", "namespace": sa_ns}],
    }
    cluster.kubectl("create", "namespace", sa_ns)
    cluster.kubectl("create", "serviceaccount", "aiguard-operator", "-n", sa_ns)
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [role, binding]}),
    )
    token = cluster.kubectl(
        "create", "token", "aiguard-operator", "-n", sa_ns, "--duration=1h"
    ).stdout.strip()
    path = tmp_path / "restricted.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "operator",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": cluster.server,
                            "certificate-authority-data": base64.b64encode(
                                cluster.ca_path.read_bytes()
                            ).decode(),
                        },
                    }
                ],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [{"name": "operator", "context": {"cluster": "c", "user": "operator"}}],
            }
        )
    )
    try:
        yield path, sa_ns
    finally:
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", role_name, check=False)
        cluster.kubectl("delete", "namespace", sa_ns, "--wait=false", check=False)


def can_i(cluster: Cluster, kubeconfig: Path, *args: str) -> bool:
    """`kubectl auth can-i` as the operator's ServiceAccount."""
    result = subprocess.run(
        [str(cluster.kubectl_path), "--kubeconfig", str(kubeconfig), "auth", "can-i", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip() == "yes"


def test_the_documented_role_is_least_privilege(
    cluster: Cluster, restricted_kubeconfig: tuple[Path, str]
) -> None:
    kubeconfig, _ = restricted_kubeconfig

    assert can_i(cluster, kubeconfig, "get", "secrets", "-n", "default")
    assert not can_i(cluster, kubeconfig, "list", "secrets", "-n", "default")
    assert not can_i(cluster, kubeconfig, "update", "pods", "-n", "default")
    assert not can_i(cluster, kubeconfig, "delete", "aipolicies.aiguard.dev", "-n", "default")
    assert not can_i(cluster, kubeconfig, "create", "customresourcedefinitions")
    assert not can_i(cluster, kubeconfig, "patch", "validatingwebhookconfigurations/someone-elses")


def test_operator_does_its_job_with_only_the_documented_rules(
    cluster: Cluster,
    policy_namespace: str,
    operator: DevOperator,
    restricted_kubeconfig: tuple[Path, str],
    tmp_path: Path,
) -> None:
    kubeconfig, sa_ns = restricted_kubeconfig
    ns = policy_namespace
    operator.stop()  # one operator at a time: the same peering and webhook configuration
    try:
        with DevOperator(
            cluster,
            tmp_path / "restricted-operator",
            operator_kubeconfig=kubeconfig,
            env={"AIGUARD_OPERATOR_NAMESPACE": sa_ns},
        ) as restricted:
            apply(cluster, ns, CHAT)
            obj = wait_ready(cluster, ns, "chat")
            assert configmap(cluster, ns, "chat") is not None
            assert obj["status"]["compiledHash"]
            assert "does not compile" in rejected(
                cluster,
                ns,
                {
                    **CHAT,
                    "spec": {
                        **CHAT["spec"],
                        "guardrails": {"input": {"deny": {"patterns": ["("]}}},
                    },
                },
            )
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
            cluster.wait_for(
                lambda: (
                    (get(cluster, "aipolicy", "chat", ns) or {})
                    .get("status", {})
                    .get("coverage", {})
                    .get("governedPods")
                    == 1
                ),
                TIMEOUT,
                what="the pod counted",
            )
            events = cluster.kubectl_json("get", "events", "-n", ns)["items"]
            assert any(e["reason"] == "ConfigMapCreated" for e in events)
            cluster.kubectl("delete", "aipolicy", "chat", "-n", ns)
            cluster.wait_for(
                lambda: configmap(cluster, ns, "chat") is None, TIMEOUT, what="ConfigMap deleted"
            )
        log = restricted.log_path.read_text()  # also its shutdown: kopf removes its webhooks
        assert "Forbidden" not in log
        # an HTTP 403 anywhere, but not the digits inside a port number such as 40305, nor the
        # milliseconds of a log line's timestamp ("[2026-12-05 03:16:19,403]")
        untimed = re.sub(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]", "", log, flags=re.MULTILINE)
        assert not re.search(r"\b403\b", untimed), "the operator was refused something"
        assert "Failed to post an event" not in log
    finally:
        operator.start()
