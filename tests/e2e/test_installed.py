"""What an installed aiguard must do, on whichever cluster it is installed in.

Two targets run these same assertions:

* ``make test``: the local control plane (etcd + kube-apiserver + kube-controller-manager) with
  the operator run by the dev harness (``tests/harness/devoperator.py``); no kubelet, so pods
  stay Pending and what admission did is what there is to see;
* ``make kind-e2e`` (hack/kind-e2e.sh, needs Docker): a kind cluster with the Helm release of
  the locally built images, selected by ``AIGUARD_E2E_KUBECONFIG``; there the pods run, and the
  workload's request goes through its injected sidecar to the provider stand-in.

The workload is the same on both: an app container and the provider stand-in
(``tests/harness/standin.py``, mounted from a ConfigMap and run by the sidecar image's Python)
in one pod, the stand-in on 127.0.0.1:8443 with a test CA, so the injected sidecar reaches it
over TLS inside the pod and nothing listens beyond it.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from aiguard_api import constants
from tests.harness.cluster import Cluster
from tests.integration.test_policy_operator import TIMEOUT, apply, condition, get, wait_ready

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "harness" / "standin.py"
KIND_KUBECONFIG = os.environ.get("AIGUARD_E2E_KUBECONFIG", "")
RELEASE_NAMESPACE = os.environ.get("AIGUARD_E2E_NAMESPACE", "aiguard-system")
IMAGE = os.environ.get("AIGUARD_E2E_IMAGE", "aiguard-sidecar:dev")
OPENAI_KEY = "sk-e2e-installed-6c1f"
STANDIN_PORT = 8443
APP = "e2e-chat"
POD_READY_TIMEOUT = float(os.environ.get("AIGUARD_E2E_POD_TIMEOUT", "240"))


@dataclass
class Target:
    cluster: Cluster
    operator_ready: Callable[[], None]
    runs_pods: bool  # a cluster with nodes (kind) rather than the bare control plane


@pytest.fixture(scope="module")
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Target:
    if KIND_KUBECONFIG:
        kubectl = shutil.which("kubectl")
        assert kubectl, "kubectl is not on PATH"
        cluster = Cluster.from_kubeconfig(
            Path(KIND_KUBECONFIG), Path(kubectl).parent, tmp_path_factory.mktemp("kind")
        )
        return Target(cluster, lambda: release_ready(cluster), runs_pods=True)
    cluster = request.getfixturevalue("cluster")
    operator = request.getfixturevalue("operator")

    def dev_operator_ready() -> None:
        assert operator.proc is not None
        assert operator.proc.poll() is None, f"the dev operator exited:\n{operator.log_tail()}"

    return Target(cluster, dev_operator_ready, runs_pods=False)


def release_ready(cluster: Cluster) -> None:
    """Every Deployment of the Helm release is Available with all replicas ready."""
    deployments = cluster.kubectl_json("get", "deployments", "-n", RELEASE_NAMESPACE)["items"]
    assert deployments, f"no Deployment in {RELEASE_NAMESPACE}"
    for d in deployments:
        name = d["metadata"]["name"]
        available = condition(d, "Available")
        assert available, f"{name}: no Available condition yet"
        assert available["status"] == "True", f"{name}: {available}"
        assert d["status"].get("readyReplicas", 0) == d["spec"].get("replicas", 1), name


@pytest.fixture
def workload_namespace(target: Target) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    target.cluster.kubectl("create", "namespace", name)
    yield name
    target.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# ── the objects a user applies ─────────────────────────────────────────────────────────────


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": data,
    }


def policy() -> dict[str, Any]:
    return {
        "apiVersion": "aiguard.dev/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": "e2e"},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
            "providers": [
                {
                    "name": "standin",
                    "type": "openai",
                    "baseURL": f"https://127.0.0.1:{STANDIN_PORT}/v1",
                    "apiKeySecretRef": {"name": "openai-api-key", "key": "api-key"},
                    "tls": {"caSecretRef": {"name": "standin-ca", "key": "ca.crt"}},
                }
            ],
            "routes": [
                {"name": "chat", "models": ["gpt-4o*"], "targets": [{"provider": "standin"}]}
            ],
            "access": {"rules": [{"name": "all", "subjects": {"allAuthenticated": True}}]},
            "guardrails": {"input": {"pii": {"entities": {"EMAIL_ADDRESS": "redact"}}}},
        },
    }


def workload() -> dict[str, Any]:
    python = ["python", "-c"]
    standin = [
        "python", "/standin/standin.py", "--port", str(STANDIN_PORT),
        "--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key", "--openai-key", OPENAI_KEY,
    ]  # fmt: skip
    restricted = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
            "template": {
                "metadata": {
                    "labels": {
                        "app.kubernetes.io/name": APP,
                        constants.LABEL_INJECT: constants.INJECT_ENABLED,
                    }
                },
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [*python, "import time; time.sleep(10**9)"],
                            "securityContext": restricted,
                        },
                        {
                            "name": "standin",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": standin,
                            "securityContext": restricted,
                            "volumeMounts": [
                                {"name": "standin", "mountPath": "/standin", "readOnly": True},
                                {"name": "tls", "mountPath": "/tls", "readOnly": True},
                            ],
                        },
                    ],
                    "volumes": [
                        {"name": "standin", "configMap": {"name": "standin-code"}},
                        {"name": "tls", "secret": {"secretName": "standin-tls"}},
                    ],
                },
            },
        },
    }


def install_workload(cluster: Cluster, ns: str) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    objects = [
        secret("openai-api-key", {"api-key": OPENAI_KEY}),
        secret("standin-ca", {"ca.crt": ca.cert_pem.bytes().decode()}),
        secret(
            "standin-tls",
            {
                "tls.crt": "".join(b.bytes().decode() for b in cert.cert_chain_pems),
                "tls.key": cert.private_key_pem.bytes().decode(),
            },
        ),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "standin-code"},
            "data": {"standin.py": STANDIN.read_text()},
        },
    ]
    for obj in objects:
        apply(cluster, ns, obj)
    apply(cluster, ns, policy())
    wait_ready(cluster, ns, "e2e")
    apply(cluster, ns, workload())


def workload_pod(cluster: Cluster, ns: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        pods = cluster.kubectl_json("get", "pods", "-n", ns, "-l", f"app.kubernetes.io/name={APP}")[
            "items"
        ]
        return pods[0] if pods else None

    pod: dict[str, Any] = cluster.wait_for(found, TIMEOUT, interval=0.3, what=f"a {APP} pod")
    return pod


# ── the assertions ─────────────────────────────────────────────────────────────────────────


def test_the_operator_is_ready(target: Target) -> None:
    target.operator_ready()
    hooks = [
        hook
        for config in target.cluster.kubectl_json("get", "mutatingwebhookconfigurations")["items"]
        for hook in config.get("webhooks", [])
        if hook["name"].endswith("aiguard.dev")
    ]
    assert hooks, "no aiguard mutating webhook is registered"
    assert all(hook["clientConfig"].get("caBundle") for hook in hooks)


def test_the_crds_are_established(target: Target) -> None:
    for crd in ("aipolicies.aiguard.dev", "aiincidents.aiguard.dev"):
        obj = target.cluster.kubectl_json("get", "crd", crd)
        established = condition(obj, "Established")
        assert established, crd
        assert established["status"] == "True", crd


def test_a_policy_becomes_ready_and_a_labelled_deployment_gets_the_sidecar(
    target: Target, workload_namespace: str
) -> None:
    cluster, ns = target.cluster, workload_namespace
    install_workload(cluster, ns)
    stored = get(cluster, "aipolicy", "e2e", ns)
    assert stored is not None
    ready = condition(stored, "Ready")
    assert ready
    assert ready["status"] == "True"

    pod = workload_pod(cluster, ns)
    init = {c["name"]: c for c in pod["spec"].get("initContainers", [])}
    sidecar = init.get(constants.SIDECAR_CONTAINER_NAME)
    assert sidecar, f"no sidecar injected: {json.dumps(pod['spec'])[:2000]}"
    assert sidecar.get("restartPolicy") == "Always", "a native sidecar"
    assert constants.ANNOTATION_STATUS in pod["metadata"].get("annotations", {})
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    env = {e["name"]: e.get("value") for e in app.get("env", [])}
    assert env.get("OPENAI_BASE_URL") == "http://127.0.0.1:15080/openai/v1"
    # the provider key's Secret is mounted into the sidecar only
    secret_volumes = {
        v["name"]
        for v in pod["spec"]["volumes"]
        if v.get("secret", {}).get("secretName") == "openai-api-key"
    }
    assert secret_volumes, "the provider key is not mounted into the sidecar"
    assert {m["name"] for m in sidecar.get("volumeMounts", [])} >= secret_volumes
    assert not {m["name"] for m in app.get("volumeMounts", [])} & secret_volumes

    if not target.runs_pods:
        return  # the bare control plane has no kubelet: admission is all there is to see
    cluster.kubectl(
        "wait", "pod", "-n", ns, "-l", f"app.kubernetes.io/name={APP}",
        "--for=condition=Ready", f"--timeout={POD_READY_TIMEOUT:.0f}s",
        timeout=POD_READY_TIMEOUT + 30,
    )  # fmt: skip
    client = textwrap.dedent(
        """
        import json, os, urllib.request
        body = {"model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hello from mail a@example.com"}]}
        req = urllib.request.Request(
            os.environ["OPENAI_BASE_URL"] + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json",
                     "Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", "x")})
        with urllib.request.urlopen(req, timeout=30) as r:
            print(r.status, json.loads(r.read())["choices"][0]["message"]["content"])
        """
    )
    result = cluster.kubectl(
        "exec", "-n", ns, f"deploy/{APP}", "-c", "app", "--", "python", "-c", client
    )
    status, _, reply = result.stdout.strip().partition(" ")
    assert status == "200", result.stdout + result.stderr
    assert reply.startswith("echo: hello from mail")
    assert "a@example.com" not in reply, "the provider saw the address: PII not redacted"
