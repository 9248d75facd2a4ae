"""The local control plane does what the other integration tests rely on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness.cluster import K8S_VERSION, Cluster

pytestmark = pytest.mark.cluster

TIMEOUT = 60.0

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  replicas: 2
  selector:
    matchLabels: {app: app}
  template:
    metadata:
      labels: {app: app}
    spec:
      containers:
        - name: app
          image: registry.invalid/app:1
"""


def _items(cluster: Cluster, kind: str, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", kind, "-n", namespace)["items"]
    return items


def _owned_by(obj: dict[str, Any], kind: str, name: str) -> bool:
    return any(
        ref["kind"] == kind and ref["name"] == name
        for ref in obj["metadata"].get("ownerReferences", [])
    )


def test_server_reports_the_built_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)

    assert version["serverVersion"]["gitVersion"] == K8S_VERSION
    assert version["clientVersion"]["gitVersion"] == K8S_VERSION


def test_deployment_gets_a_replicaset_and_pending_pods(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)

    def replicaset() -> dict[str, Any] | None:
        owned = [
            rs
            for rs in _items(cluster, "replicasets", namespace)
            if _owned_by(rs, "Deployment", "app")
        ]
        return owned[0] if owned else None

    rs = cluster.wait_for(replicaset, TIMEOUT, what="the Deployment's ReplicaSet")
    rs_name = rs["metadata"]["name"]

    def pods() -> list[dict[str, Any]]:
        owned = [
            pod
            for pod in _items(cluster, "pods", namespace)
            if _owned_by(pod, "ReplicaSet", rs_name)
        ]
        return owned if len(owned) == 2 else []

    created = cluster.wait_for(pods, TIMEOUT, what="2 Pods of the ReplicaSet")

    # no kubelet, no scheduler: admitted and stored, never scheduled
    assert {pod["status"]["phase"] for pod in created} == {"Pending"}
    assert all("nodeName" not in pod["spec"] for pod in created)
    assert {pod["spec"]["serviceAccountName"] for pod in created} == {"default"}


def test_namespace_gets_default_service_account_and_root_ca(
    cluster: Cluster, namespace: str
) -> None:
    def exists(kind: str, name: str) -> bool:
        result = cluster.kubectl("get", kind, name, "-n", namespace, check=False)
        return result.returncode == 0

    cluster.wait_for(lambda: exists("serviceaccount", "default"), TIMEOUT, what="default SA")
    cluster.wait_for(
        lambda: exists("configmap", "kube-root-ca.crt"), TIMEOUT, what="kube-root-ca.crt"
    )
    ca = cluster.kubectl_json("get", "configmap", "kube-root-ca.crt", "-n", namespace)
    assert ca["data"]["ca.crt"].strip() == cluster.ca_path.read_text().strip()


def test_admissionregistration_v1_is_served(cluster: Cluster) -> None:
    versions = cluster.kubectl("api-versions").stdout.split()

    assert "admissionregistration.k8s.io/v1" in versions


@pytest.mark.parametrize("kind", ["Mutating", "Validating"])
def test_admission_webhooks_are_called(cluster: Cluster, namespace: str, kind: str) -> None:
    """A webhook with failurePolicy Fail that nothing serves rejects requests it matches,
    which proves the apiserver calls webhooks of this kind."""
    name = f"unreachable-{namespace}-{kind.lower()}"
    cluster.kubectl("label", "namespace", namespace, f"webhook-test={kind.lower()}")
    webhook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": f"{kind}WebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "unreachable.aiguard.dev",
                "clientConfig": {"url": "https://127.0.0.1:1/admit"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["configmaps"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"webhook-test": kind.lower()}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }
        ],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(webhook))
    try:
        # Webhook configurations reach the admission chain asynchronously (an informer).
        def rejected() -> str | None:
            result = cluster.kubectl(
                "create", "configmap", "probe", "-n", namespace, "--dry-run=server", check=False
            )
            return result.stderr if result.returncode != 0 else None

        error = cluster.wait_for(rejected, TIMEOUT, what=f"the {kind} webhook to be called")
        assert "failed calling webhook" in error
        assert "unreachable.aiguard.dev" in error
    finally:
        cluster.kubectl("delete", f"{kind.lower()}webhookconfiguration", name, "--ignore-not-found")
