"""The chart against the real API server: every scenario's manifests are accepted, and
`helm install` creates the operator's objects (pods stay Pending: there is no kubelet).

ServiceMonitor, PodMonitor, PrometheusRule and cert-manager's kinds need their CRDs: the real
upstream ones, downloaded once through the Go module proxy (``go mod download``) into
``~/.cache/aiguard/crds/`` and applied before the tests.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster
from tests.harness.devoperator import DevOperator
from tests.integration.test_policy_operator import (
    CHAT,
    apply,
    configmap,
    get,
    rejected,
    wait_ready,
)
from tests.unit.test_chart import CHART, SCENARIOS, helm_binary, objects, render, scenario_file

pytestmark = pytest.mark.cluster

TIMEOUT = 60.0


@dataclass(frozen=True)
class Upstream:
    module: str
    version: str
    directory: str
    files: tuple[str, ...]


UPSTREAM_CRDS = (
    Upstream(
        "github.com/prometheus-operator/prometheus-operator",
        "v0.85.0",
        "example/prometheus-operator-crd",
        (
            "monitoring.coreos.com_servicemonitors.yaml",
            "monitoring.coreos.com_podmonitors.yaml",
            "monitoring.coreos.com_prometheusrules.yaml",
        ),
    ),
    Upstream(
        "github.com/cert-manager/cert-manager",
        "v1.21.2",
        "deploy/crds",
        (
            "cert-manager.io_certificates.yaml",
            "cert-manager.io_certificaterequests.yaml",
            "cert-manager.io_issuers.yaml",
            "cert-manager.io_clusterissuers.yaml",
        ),
    ),
)


def crd_cache() -> Path:
    return Path(os.environ.get("AIGUARD_CACHE", Path.home() / ".cache" / "aiguard")) / "crds"


def fetch(upstream: Upstream) -> list[Path]:
    """The upstream CRD files, from the cache or the module's zip from the Go module proxy."""
    target = crd_cache() / f"{upstream.module.rsplit('/', 1)[-1]}@{upstream.version}"
    paths = [target / name for name in upstream.files]
    if all(p.exists() for p in paths):
        return paths
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{upstream.module}@{upstream.version}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    info = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "Zip" not in info:
        raise RuntimeError(
            f"go mod download {upstream.module}@{upstream.version} failed: "
            f"{info.get('Error') or proc.stderr}"
        )
    target.mkdir(parents=True, exist_ok=True)
    prefix = f"{upstream.module}@{upstream.version}/{upstream.directory}/"
    with zipfile.ZipFile(info["Zip"]) as archive:
        for path in paths:
            path.write_bytes(archive.read(prefix + path.name))
    return paths


@pytest.fixture(scope="module")
def upstream_crds(cluster: Cluster) -> list[str]:
    """Install the upstream CRDs the chart's optional kinds need; their names."""
    names = []
    for upstream in UPSTREAM_CRDS:
        for path in fetch(upstream):
            (crd,) = objects(path.read_text())
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
            names.append(crd["metadata"]["name"])
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names)
    )
    return names


def helm_in(
    cluster: Cluster, home: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    argv = [str(helm_binary()), "--kubeconfig", str(cluster.kubeconfig), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def scenario_values(name: str, namespace: str) -> list[str | Path]:
    """The scenario's values file; the namespaced scenario serves the test's namespace."""
    extra: list[str | Path] = []
    if name == "namespaced":
        extra.append(f"operator.watchNamespaces={{{namespace}}}")
    return [scenario_file(name), *extra]


# --------------------------------------------------------------------------- every scenario


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_scenario_is_accepted_by_the_api_server(
    scenario: str, cluster: Cluster, namespace: str, upstream_crds: list[str]
) -> None:
    release = f"aiguard-{uuid.uuid4().hex[:6]}"
    manifest = render(*scenario_values(scenario, namespace), release=release, namespace=namespace)

    proc = cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "--field-manager=aiguard-chart-test",
        "-f",
        "-",
        input=manifest.stdout,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr
    applied = [line for line in proc.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(objects(manifest.stdout)), proc.stdout


# --------------------------------------------------------------------------- helm install


CHART_CRDS = ("aipolicies.aiguard.dev", "aiincidents.aiguard.dev", "clusterkopfpeerings.kopf.dev")


def adopt_crds(cluster: Cluster, release: str, namespace: str) -> None:
    """Other tests in the session may have applied the CRDs with kubectl: mark them as this
    release's, the way Helm adopts existing objects."""
    for name in CHART_CRDS:
        if cluster.kubectl("get", "crd", name, check=False).returncode != 0:
            continue
        cluster.kubectl(
            "annotate",
            "--overwrite",
            f"crd/{name}",
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
        )
        cluster.kubectl("label", "--overwrite", f"crd/{name}", "app.kubernetes.io/managed-by=Helm")


@pytest.fixture
def helm_home(tmp_path: Path) -> Path:
    return tmp_path / "helm"


@dataclass
class Installed:
    release: str
    namespace: str
    cluster: Cluster

    def get(self, kind: str, name: str, *, namespaced: bool = True) -> bool:
        args = ["get", kind, name] + (["-n", self.namespace] if namespaced else [])
        return self.cluster.kubectl(*args, check=False).returncode == 0


@pytest.fixture
def install(
    cluster: Cluster, namespace: str, helm_home: Path, upstream_crds: list[str]
) -> Iterator[dict[str, Installed]]:
    """``install[scenario]`` after calling ``installer(scenario)``; uninstalled at the end
    whatever happens (a chart-rendered webhook configuration must not outlive the test)."""
    releases: dict[str, Installed] = {}
    yield releases
    for inst in releases.values():
        helm_in(cluster, helm_home, "uninstall", inst.release, "-n", inst.namespace, check=False)


def helm_install(
    cluster: Cluster, helm_home: Path, namespace: str, scenario: str, into: dict[str, Installed]
) -> Installed:
    release = f"aiguard-{uuid.uuid4().hex[:6]}"
    adopt_crds(cluster, release, namespace)
    into[scenario] = inst = Installed(release, namespace, cluster)
    args = ["install", release, str(CHART), "-n", namespace]
    for v in scenario_values(scenario, namespace):
        args += ["-f", str(v)] if isinstance(v, Path) else ["--set", v]
    helm_in(cluster, helm_home, *args)
    return inst


@pytest.mark.parametrize("scenario", ["default", "cert-manager"])
def test_helm_install_creates_the_operator_and_uninstall_keeps_crds_and_audit_claim(
    scenario: str,
    cluster: Cluster,
    namespace: str,
    helm_home: Path,
    install: dict[str, Installed],
) -> None:
    inst = helm_install(cluster, helm_home, namespace, scenario, install)
    name = inst.release  # the release name contains "aiguard": it is the name prefix
    cert_manager = scenario == "cert-manager"

    deployment = cluster.kubectl_json("get", "deployment", f"{name}-operator", "-n", namespace)
    assert deployment["spec"]["replicas"] == 1
    for service in ("webhook", "collector", "metrics"):
        assert inst.get("service", f"{name}-{service}"), service
    assert inst.get("serviceaccount", name)
    assert inst.get("persistentvolumeclaim", f"{name}-collector")
    assert inst.get("networkpolicy", f"{name}-operator")
    for role in ("operator", "collector"):
        assert inst.get("clusterrole", f"{name}-{role}", namespaced=False), role
        assert inst.get("clusterrolebinding", f"{name}-{role}", namespaced=False), role
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        assert inst.get(kind, name, namespaced=False) == cert_manager, kind
    if cert_manager:
        hooks = cluster.kubectl_json("get", "mutatingwebhookconfiguration", name)["webhooks"]
        assert {h["clientConfig"]["service"]["name"] for h in hooks} == {f"{name}-webhook"}
        assert inst.get("certificate", f"{name}-webhook")
        assert inst.get("issuer", f"{name}-ca")
    # The controller manager turns the Deployment into a pod; without a kubelet it stays
    # Pending, which is enough to see that the API server took the whole pod spec.
    pods = cluster.wait_for(
        lambda: cluster.kubectl_json(
            "get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={name}"
        )["items"],
        TIMEOUT,
        what="the operator pod",
    )
    assert pods[0]["status"]["phase"] == "Pending"
    assert pods[0]["spec"]["serviceAccountName"] == name

    helm_in(cluster, helm_home, "uninstall", name, "-n", namespace, "--wait")
    del install[scenario]

    assert not inst.get("deployment", f"{name}-operator")
    assert not inst.get("clusterrole", f"{name}-operator", namespaced=False)
    assert not inst.get("mutatingwebhookconfiguration", name, namespaced=False)
    for crd in CHART_CRDS:  # crds.keep
        assert inst.get("crd", crd, namespaced=False), crd
    assert inst.get("persistentvolumeclaim", f"{name}-collector")  # the audit evidence


# --------------------------------------------------------------------------- the chart's RBAC

# Where a pod listens and keeps files; on this machine the operator process binds 127.0.0.1
# and uses a work directory instead (the dev harness sets these).
POD_ONLY = {
    "AIGUARD_LIVENESS",
    "AIGUARD_METRICS",
    "AIGUARD_WEBHOOK_ADDR",
    "AIGUARD_WEBHOOK_HOST",
    "AIGUARD_WEBHOOK_PORT",
    "AIGUARD_WEBHOOK_CERT_DIR",
    "AIGUARD_WEBHOOK_CERT_HOSTS",
    "AIGUARD_COLLECTOR_ADDR",
    "AIGUARD_COLLECTOR_PORT",
    "AIGUARD_COLLECTOR_DB",
    "AIGUARD_COLLECTOR_CERT_DIR",
    "AIGUARD_SIDECAR_COLLECTOR_URL",
    "AIGUARD_SIDECAR_COLLECTOR_CA_FILE",
}


def chart_environment(manifest: str, namespace: str) -> dict[str, str]:
    """The operator container's environment from the rendered Deployment, minus POD_ONLY."""
    (deployment,) = [d for d in objects(manifest) if d["kind"] == "Deployment"]
    env = {}
    for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if var["name"] in POD_ONLY:
            continue
        if "valueFrom" in var:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
            env[var["name"]] = namespace
        else:
            env[var["name"]] = var["value"]
    return env


def service_account_kubeconfig(cluster: Cluster, path: Path, account: str, namespace: str) -> Path:
    token = cluster.kubectl(
        "create", "token", account, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "chart",
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
        "users": [{"name": "chart", "user": {"token": token}}],
        "contexts": [{"name": "chart", "context": {"cluster": "c", "user": "chart"}}],
    }
    path.write_text(json.dumps(config))
    return path


def test_the_operator_does_its_job_with_the_charts_service_account_and_environment(
    cluster: Cluster,
    policy_namespace: str,
    operator: DevOperator,
    helm_home: Path,
    install: dict[str, Installed],
    tmp_path: Path,
) -> None:
    """The ServiceAccount, ClusterRoles and bindings `helm install` created, and the
    environment the chart renders, run the real operator: it compiles a policy, rejects an
    invalid one at admission, registers its webhooks and counts pods, and is refused nothing."""
    release_ns = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", release_ns)
    try:
        inst = helm_install(cluster, helm_home, release_ns, "default", install)
        manifest = render(scenario_file("default"), release=inst.release, namespace=release_ns)
        env = chart_environment(manifest.stdout, release_ns)
        # The chart mounts its generated capture key there; here, a key file of the same form.
        assert env["AIGUARD_COLLECTOR_CAPTURE_KEY_FILE"] == "/var/run/aiguard/capture-key/keys"
        key_file = tmp_path / "capture-keys"
        key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        env["AIGUARD_COLLECTOR_CAPTURE_KEY_FILE"] = str(key_file)
        kubeconfig = service_account_kubeconfig(
            cluster, tmp_path / "chart.kubeconfig", inst.release, release_ns
        )
        ns = policy_namespace
        operator.stop()  # one operator at a time: the same peering and webhook configuration
        try:
            with DevOperator(
                cluster,
                tmp_path / "chart-operator",
                operator_kubeconfig=kubeconfig,
                env=env,
                collector=True,
            ) as running:
                apply(cluster, ns, CHAT)
                assert wait_ready(cluster, ns, "chat")["status"]["compiledHash"]
                assert configmap(cluster, ns, "chat") is not None
                deny = {"input": {"deny": {"patterns": ["("]}}}
                bad = {**CHAT, "spec": {**CHAT["spec"], "guardrails": deny}}
                assert "does not compile" in rejected(cluster, ns, bad)
                apply(cluster, ns, POD)
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
            log = running.log_path.read_text()
            assert "Forbidden" not in log
            assert not re.search(r"\b403\b", log), "the operator was refused something"
        finally:
            operator.start()
    finally:
        # (the install fixture uninstalls the release; the session operator, started again,
        # re-registered the aiguard.dev webhook configurations with its own URL)
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "chat-0",
        "labels": {"app.kubernetes.io/name": "chat", "aiguard.dev/inject": "enabled"},
    },
    "spec": {"containers": [{"name": "app", "image": "registry.invalid/chat:1"}]},
}
