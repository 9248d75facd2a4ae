"""The Helm chart (helm/aiguard): lint, render, goldens, schema, and agreement with the operator.

Every scenario in ``helm/aiguard/ci/*-values.yaml`` is linted (also ``--strict``) and rendered;
the rendered output is compared with ``tests/unit/testdata/chart/<scenario>.yaml``. Refresh
every golden after an intended change, then review the diff::

    REFRESH_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_chart.py

The chart must configure the real operator: the environment it renders is parsed by the
operator's own settings code, its static webhook configurations are compared with what the
operator registers itself, and its RBAC with ``docs/operator-rbac.md``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiguard_operator import admission, handlers, settings
from aiguard_operator.collector import config as collector_config
from tests.harness.cluster import default_bin_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "aiguard"
GOLDENS = Path(__file__).parent / "testdata" / "chart"
REFRESH = os.environ.get("REFRESH_GOLDEN") == "1"
RELEASE, NAMESPACE = "aiguard", "aiguard-system"
SCENARIOS = sorted(
    p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")
)
RBAC_DOC = ROOT / "docs" / "operator-rbac.md"


def helm_binary() -> Path:
    """helm as the control-plane binaries are found (tests/harness/cluster.py find_bin_dir):
    ``AIGUARD_K8S_BIN``, else the cache hack/k8s-binaries.sh fills, else ``.local/bin``."""
    env = os.environ.get("AIGUARD_K8S_BIN")
    candidates = [Path(env)] if env else [default_bin_dir(), ROOT / ".local" / "bin"]
    for directory in candidates:
        if os.access(directory / "helm", os.X_OK):
            return directory / "helm"
    raise FileNotFoundError(
        f"no helm in {', '.join(map(str, candidates))}: run `make k8s-binaries`"
    )


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def scenario_file(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


def render(
    *values: str | Path,
    chart: Path = CHART,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``helm template``; ``values`` are files or ``--set`` expressions (``a.b=c``)."""
    args = ["template", release, str(chart), "--namespace", namespace]
    for v in values:
        args += ["-f", str(v)] if isinstance(v, Path) else ["--set", v]
    return helm(*args, check=check)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def objects(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(text, Loader=_Loader) if d]


# The capture key Secret holds 32 random bytes per render (kept across upgrades by lookup).
RANDOM_KEY = re.compile(r"(?m)^(  keys: )\S+$")


def golden_text(rendered: str) -> str:
    """The rendered output with each CRD reduced to its name: their content is crds/, which
    ``test_rendered_crds_are_the_generated_crds`` compares, and would drown the goldens; the
    generated capture key masked."""
    out = []
    for doc in re.split(r"(?m)^---\n", rendered):
        if "name: " in doc and "-capture-key" in doc and re.search(r"(?m)^kind: Secret$", doc):
            doc = RANDOM_KEY.sub(r"\1<32 random bytes, base64>", doc)
        match = re.search(r"(?m)^kind: CustomResourceDefinition$", doc)
        if match:
            (crd,) = objects(doc)
            source = doc.splitlines()[:2]
            doc = "\n".join([*source, f"# CustomResourceDefinition {crd['metadata']['name']}"])
            doc += "\n"
        out.append(doc)
    return "---\n".join(out)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"{len(matches)} {kind} named {name}"
    return matches[0]


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {name: render(scenario_file(name)).stdout for name in SCENARIOS}


# --------------------------------------------------------------------------- generated files


def test_generated_chart_files_are_up_to_date() -> None:
    """CRD copies, RBAC rules, values.schema.json and README.md: `make chart` changes nothing."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "chart_gen.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr


def test_rendered_crds_are_the_generated_crds(rendered: dict[str, str]) -> None:
    source = {
        d["metadata"]["name"]: d
        for path in sorted((ROOT / "crds").glob("*.yaml"))
        for d in objects(path.read_text())
    }
    chart = {
        d["metadata"]["name"]: d
        for d in objects(rendered["default"])
        if d["kind"] == "CustomResourceDefinition"
    }

    assert chart.keys() == source.keys()
    for name, crd in chart.items():
        assert crd["spec"] == source[name]["spec"], name
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_without_crds_keep_the_crds_are_deleted_on_uninstall() -> None:
    docs = objects(render("crds.keep=false").stdout)

    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert crds
    assert all("annotations" not in d["metadata"] for d in crds)


def test_with_crds_disabled_no_crd_is_rendered() -> None:
    docs = objects(render("crds.enabled=false").stdout)

    assert not [d for d in docs if d["kind"] == "CustomResourceDefinition"]


# --------------------------------------------------------------------------- lint and goldens


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(scenario: str, strict: bool) -> None:
    args = ["lint", str(CHART), "-f", str(scenario_file(scenario)), "--namespace", NAMESPACE]
    proc = helm(*args, *(["--strict"] if strict else []), check=False)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout, proc.stdout
    assert "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_golden(scenario: str, rendered: dict[str, str]) -> None:
    golden = GOLDENS / f"{scenario}.yaml"
    if REFRESH:
        GOLDENS.mkdir(parents=True, exist_ok=True)
        golden.write_text(golden_text(rendered[scenario]))
    assert golden.exists(), f"no golden for {scenario}; run with REFRESH_GOLDEN=1"

    assert golden_text(rendered[scenario]) == golden.read_text(), (
        f"{scenario} renders differently: REFRESH_GOLDEN=1 and review the diff"
    )


def test_no_unused_goldens() -> None:
    unused = sorted(g.name for g in GOLDENS.glob("*.yaml") if g.stem not in SCENARIOS)

    assert not unused, f"goldens without a ci/*-values.yaml scenario: {unused}"


def test_clusters_without_native_sidecars_are_refused() -> None:
    old = helm("template", RELEASE, str(CHART), "--kube-version", "1.28.9", check=False)
    new = helm("template", RELEASE, str(CHART), "--kube-version", "1.29.0", check=False)

    assert old.returncode != 0
    assert "incompatible with Kubernetes v1.28.9" in old.stderr, old.stderr
    assert new.returncode == 0, new.stderr


def test_scenarios_cover_the_switches() -> None:
    assert {"default", "cert-manager", "postgres", "monitoring", "ha", "namespaced"} <= set(
        SCENARIOS
    )


# --------------------------------------------------------------------------- the schema


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("operator.replicas=2", "additional properties 'replicas' not allowed"),
        ("webhok.port=9443", "additional properties 'webhok' not allowed"),
        ("webhook.timeoutSeconds=abc", "/webhook/timeoutSeconds': got string, want integer"),
        ("webhook.timeoutSeconds=31", "/webhook/timeoutSeconds"),
        ("webhook.failurePolicy=Retry", "/webhook/failurePolicy"),
        ("operator.logLevel=verbose", "/operator/logLevel"),
        ("operator.replicaCount=0", "/operator/replicaCount"),
        ("operator.watchNamespaces[0]=Team_A", "/operator/watchNamespaces/0"),
        ("collector.persistence.accessModes[0]=ReadWriteSometimes", "accessModes/0"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(value: str, message: str) -> None:
    proc = render(value, check=False)

    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_every_values_key_is_described_in_the_schema_and_the_readme() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, path: str) -> Iterator[str]:
        assert node.get("description"), f"{path} has no description"
        props = node.get("properties")
        if isinstance(value, dict) and props and node.get("additionalProperties") is False:
            for key, sub in value.items():
                yield from walk(props[key], sub, f"{path}.{key}".lstrip("."))
        else:
            yield path

    for key in values:
        for leaf in walk(schema["properties"][key], values[key], key):
            assert f"| `{leaf}` |" in readme, leaf


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ["operator.replicaCount=2", "webhook.certManager.enabled=true"],
            "needs collector.postgres.enabled=true",
        ),
        (
            ["operator.replicaCount=2", "operator.peering=standalone"],
            "needs kopf peering",
        ),
        (["collector.postgres.enabled=true"], "needs collector.postgres.existingSecret"),
    ],
)
def test_combinations_that_cannot_work_are_refused_with_the_fix(
    values: list[str], message: str
) -> None:
    proc = render(*values, check=False)

    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- the operator's view


def container_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The operator container's environment as the kubelet would give it (downward API and
    Secret references resolved to plausible values, $(VAR) references to an address)."""
    deployment = find(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for var in container["env"]:
        if "valueFrom" in var:
            ref = var["valueFrom"]
            env[var["name"]] = (
                NAMESPACE if "fieldRef" in ref else "postgresql://aiguard@db:5432/aiguard"
            )
        else:
            env[var["name"]] = var["value"]
    for name, value in env.items():
        if value.startswith("$("):
            env[name] = "10.96.0.10"  # a ClusterIP from the Service variables
    return env


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_operator_accepts_the_environment_the_chart_sets(
    scenario: str, rendered: dict[str, str]
) -> None:
    docs = objects(rendered[scenario])
    env = container_env(docs)
    documented = f"{settings.__doc__}\n{collector_config.__doc__}"

    unknown = sorted(name for name in env if name not in documented)
    assert not unknown, f"the chart sets variables the operator does not read: {unknown}"
    cfg = settings.from_env(env)
    collector = collector_config.from_env(env)

    assert cfg.operator_namespace == NAMESPACE
    assert cfg.webhook.addr == "0.0.0.0"
    assert cfg.metrics.addr == "0.0.0.0"
    assert NAMESPACE in cfg.webhook.exclude_namespaces
    values = yaml.safe_load(scenario_file(scenario).read_text()) or {}
    cert_manager = values.get("webhook", {}).get("certManager", {}).get("enabled", False)
    if cert_manager:
        assert cfg.webhook.managed is None
        assert not cfg.webhook.generate_certs
    else:
        assert cfg.webhook.managed == "aiguard.dev"
        assert cfg.webhook.generate_certs
        assert f"aiguard-collector.{NAMESPACE}.svc" in cfg.webhook.cert_hosts
    assert collector.enabled == values.get("collector", {}).get("enabled", True)
    if collector.enabled:
        assert collector.cert_dir == cfg.webhook.cert_dir  # TLS with the webhook certificate
        assert cfg.sidecar.collector_url == f"https://aiguard-collector.{NAMESPACE}.svc:15093"
        assert cfg.collector_ca_file is not None
        assert cfg.collector_ca_file.parent == cfg.webhook.cert_dir


def test_sidecar_defaults_reach_the_operator() -> None:
    docs = objects(
        render(
            "sidecar.image.tag=1.2.3",
            "sidecar.resources.limits.cpu=2",
            "sidecar.resources.requests.memory=256Mi",
            "sidecar.spoolSize=2Gi",
            "sidecar.logLevel=debug",
        ).stdout
    )

    sidecar = settings.from_env(container_env(docs)).sidecar

    assert sidecar.image == "ghcr.io/aiguard/aiguard-sidecar:1.2.3"
    assert sidecar.version == "1.2.3"
    assert sidecar.resources == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi", "cpu": "2"},
    }
    assert (sidecar.spool_size, sidecar.log_level) == ("2Gi", "debug")


def test_operator_pod_is_hardened(rendered: dict[str, str]) -> None:
    pod = find(objects(rendered["default"]), "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]


def test_ha_spreads_replicas_with_a_budget_and_distinct_peering_priorities(
    rendered: dict[str, str],
) -> None:
    docs = objects(rendered["ha"])
    deployment = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert deployment["spec"]["replicas"] == 3
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert find(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    # kopf pauses all peers that share a priority: each replica draws its own.
    assert "command" not in container
    env = container_env(docs)
    assert env["AIGUARD_PEERING_PRIORITY"] == "random"
    assert env["AIGUARD_PEERING"] == "aiguard"
    assert settings.from_env({**env, "AIGUARD_OPERATOR_NAMESPACE": NAMESPACE}).peering_priority


def test_replicas_share_one_generated_ca_through_a_secret_they_alone_may_write(
    rendered: dict[str, str],
) -> None:
    docs = objects(rendered["default"])
    secret = container_env(docs)["AIGUARD_WEBHOOK_CERT_SECRET"]
    role = find(docs, "Role", f"{RELEASE}-webhook-certs")
    assert role["metadata"]["namespace"] == NAMESPACE
    by_verbs = {tuple(r["verbs"]): r.get("resourceNames") for r in role["rules"]}
    assert by_verbs == {("get", "patch"): [secret], ("create",): None}
    binding = find(docs, "RoleBinding", f"{RELEASE}-webhook-certs")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # cert-manager mode mounts cert-manager's Secret: no shared Secret, no Role.
    cm = objects(rendered["cert-manager"])
    assert "AIGUARD_WEBHOOK_CERT_SECRET" not in container_env(cm)
    assert not [d for d in cm if d["kind"] == "Role" and "webhook-certs" in d["metadata"]["name"]]


def test_one_replica_has_no_budget_and_is_replaced_not_surged(rendered: dict[str, str]) -> None:
    docs = objects(rendered["default"])

    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert find(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert "command" not in find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_collector_storage(rendered: dict[str, str]) -> None:
    default = objects(rendered["default"])
    pvc = find(default, "PersistentVolumeClaim")
    postgres = objects(rendered["postgres"])
    dsn = next(
        v
        for v in find(postgres, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
        if v["name"] == "AIGUARD_COLLECTOR_POSTGRES_DSN"
    )

    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert find(default, "Service", "aiguard-collector")["spec"]["ports"][0]["port"] == 15093
    assert not [d for d in postgres if d["kind"] == "PersistentVolumeClaim"]
    assert dsn["valueFrom"]["secretKeyRef"] == {"name": "aiguard-postgres", "key": "dsn"}


# --------------------------------------------------------------------------- webhooks


def test_static_webhooks_are_what_the_operator_registers_itself(rendered: dict[str, str]) -> None:
    docs = objects(rendered["cert-manager"])
    values = yaml.safe_load(scenario_file("cert-manager").read_text())["webhook"]
    excluded = sorted(
        {"kube-node-lease", "kube-public", "kube-system", NAMESPACE, *values["excludeNamespaces"]}
    )
    validating = find(docs, "ValidatingWebhookConfiguration")
    mutating = find(docs, "MutatingWebhookConfiguration")
    expected_pods = admission.pod_webhooks(
        excluded=excluded,
        failure_policy=values["failurePolicy"],
        timeout_seconds=values["timeoutSeconds"],
    )
    inject_from = f"{NAMESPACE}/aiguard-webhook"

    (policy_hook,) = validating["webhooks"]
    assert policy_hook["name"] == handlers.webhook_name(handlers.WEBHOOK_ID, "aiguard.dev")
    assert policy_hook["clientConfig"]["service"]["path"] == f"/{handlers.WEBHOOK_ID}"
    assert policy_hook["namespaceSelector"] == handlers.webhook_namespace_selector(excluded)
    assert policy_hook["failurePolicy"] == "Fail"
    assert {h["name"] for h in mutating["webhooks"]} == {
        handlers.webhook_name(i, "aiguard.dev") for i in expected_pods
    }
    for hook_id, fields in expected_pods.items():
        hook = next(
            h
            for h in mutating["webhooks"]
            if h["name"] == handlers.webhook_name(hook_id, "aiguard.dev")
        )
        assert {k: hook[k] for k in fields} == fields, hook_id
        assert hook["clientConfig"]["service"] == {
            "name": "aiguard-webhook",
            "namespace": NAMESPACE,
            "port": 9443,
            "path": f"/{hook_id}",
        }
        assert hook["sideEffects"] == "NoneOnDryRun"
    for config in (validating, mutating):
        assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == inject_from
    certificate = find(docs, "Certificate", "aiguard-webhook")
    assert certificate["spec"]["secretName"] == "aiguard-webhook-tls"
    assert f"aiguard-webhook.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    assert f"aiguard-collector.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]


def test_namespaced_operator_webhooks_select_only_its_namespaces() -> None:
    docs = objects(render(scenario_file("namespaced"), "webhook.certManager.enabled=true").stdout)
    watched = ["team-a", "team-b"]
    excluded = ["kube-node-lease", "kube-public", "kube-system", NAMESPACE]
    expected = admission.pod_webhooks(
        excluded=excluded, watched=watched, failure_policy="Fail", timeout_seconds=10
    )

    for hook in find(docs, "MutatingWebhookConfiguration")["webhooks"]:
        hook_id = next(
            i for i in expected if handlers.webhook_name(i, "aiguard.dev") == hook["name"]
        )
        assert hook["namespaceSelector"] == expected[hook_id]["namespaceSelector"]


def test_without_cert_manager_the_operator_registers_the_webhooks(
    rendered: dict[str, str],
) -> None:
    docs = objects(rendered["default"])
    env = container_env(docs)

    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
    assert not kinds & {"Certificate", "Issuer"}
    # The API server does not resolve cluster DNS: the URL names the Service's ClusterIP.
    raw = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    host = next(v["value"] for v in raw if v["name"] == "AIGUARD_WEBHOOK_HOST")
    assert host == "$(AIGUARD_WEBHOOK_SERVICE_HOST)"
    assert find(docs, "Service", "aiguard-webhook")["spec"]["ports"][0]["port"] == int(
        env["AIGUARD_WEBHOOK_PORT"]
    )


# --------------------------------------------------------------------------- RBAC


def documented_rules() -> list[dict[str, Any]]:
    return list(handlers_doc_role()["rules"])


def handlers_doc_role() -> dict[str, Any]:
    (block,) = re.findall(r"```yaml\n(.*?)```", RBAC_DOC.read_text(), flags=re.S)
    role: dict[str, Any] = yaml.safe_load(block)
    return role


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(group, resource, resourceName or *, verb) for every permission the rules give."""
    return {
        (group, resource, name, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for name in rule.get("resourceNames", ["*"])
        for verb in rule["verbs"]
    }


WEBHOOK_RESOURCES = {"validatingwebhookconfigurations", "mutatingwebhookconfigurations"}


def test_operator_rules_are_exactly_the_documented_ones(rendered: dict[str, str]) -> None:
    role = find(objects(rendered["default"]), "ClusterRole", "aiguard-operator")

    assert _grants(role["rules"]) == _grants(documented_rules())


def test_with_cert_manager_the_operator_cannot_touch_webhook_configurations(
    rendered: dict[str, str],
) -> None:
    role = find(objects(rendered["cert-manager"]), "ClusterRole", "aiguard-operator")
    expected = {g for g in _grants(documented_rules()) if g[1] not in WEBHOOK_RESOURCES}

    assert _grants(role["rules"]) == expected


def test_namespaced_operator_gets_roles_in_its_namespaces_only(rendered: dict[str, str]) -> None:
    docs = objects(rendered["namespaced"])
    cluster = _grants(find(docs, "ClusterRole", "aiguard-operator")["rules"])
    roles = {
        d["metadata"]["namespace"]: d
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"] == "aiguard-operator"
    }
    bindings = {
        d["metadata"]["namespace"]
        for d in docs
        if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "aiguard-operator"
    }

    assert set(roles) == bindings == {"team-a", "team-b"}
    namespaced = _grants(roles["team-a"]["rules"])
    assert cluster | namespaced == _grants(documented_rules())
    assert {g[1] for g in cluster} == {
        "namespaces",
        "customresourcedefinitions",
        "clusterkopfpeerings",
        *WEBHOOK_RESOURCES,
    }
    assert not [d for d in docs if d["metadata"]["name"] == "aiguard-collector"]


def test_namespaced_collector_may_list_policies_for_retention() -> None:
    docs = objects(render(scenario_file("namespaced"), "collector.enabled=true").stdout)

    role = find(docs, "ClusterRole", "aiguard-collector")
    assert ("aiguard.dev", "aipolicies", "*", "list") in _grants(role["rules"])


def test_collector_may_review_tokens_and_access_and_nothing_else(rendered: dict[str, str]) -> None:
    role = find(objects(rendered["default"]), "ClusterRole", "aiguard-collector")

    assert _grants(role["rules"]) == {
        ("authentication.k8s.io", "tokenreviews", "*", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "*", "create"),
    }


# --------------------------------------------------------------------------- network policy


def test_network_policy_opens_only_the_operator_ports(rendered: dict[str, str]) -> None:
    default = find(objects(rendered["default"]), "NetworkPolicy")
    ha = find(objects(rendered["ha"]), "NetworkPolicy")
    ports = {r["ports"][0]["port"]: r.get("from") for r in default["spec"]["ingress"]}

    assert default["spec"]["policyTypes"] == ["Ingress"]
    assert set(ports) == {"webhook", "collector", "metrics"}
    assert ports["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert ports["collector"] == [{"namespaceSelector": {}}]
    webhook_from = next(
        r["from"] for r in ha["spec"]["ingress"] if r["ports"][0]["port"] == "webhook"
    )
    assert webhook_from == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]


# --------------------------------------------------------------------------- monitoring files


@pytest.fixture
def chart_with_monitoring_files(tmp_path: Path) -> Path:
    """A copy of the chart with one dashboard and one rule file, as the monitoring work
    drops them into files/dashboards and files/rules."""
    chart = tmp_path / "aiguard"
    shutil.copytree(CHART, chart)
    (chart / "files" / "dashboards" / "zz_unit_test.json").write_text(
        json.dumps({"title": "unit test dashboard", "panels": []})
    )
    (chart / "files" / "rules" / "aiguard-test.yaml").write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "aiguard.test",
                        "rules": [{"alert": "AiguardTest", "expr": "vector(1) > 0"}],
                    }
                ]
            }
        )
    )
    return chart


def test_dashboards_and_rules_in_the_files_directories_are_shipped(
    chart_with_monitoring_files: Path,
) -> None:
    docs = objects(render(scenario_file("monitoring"), chart=chart_with_monitoring_files).stdout)
    dashboard = find(docs, "ConfigMap", "aiguard-dashboard-zz-unit-test")
    rule = find(docs, "PrometheusRule")

    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["zz_unit_test.json"])["title"] == "unit test dashboard"
    assert {
        "name": "aiguard.test",
        "rules": [{"alert": "AiguardTest", "expr": "vector(1) > 0"}],
    } in rule["spec"]["groups"]
    assert find(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "aiguard-admin"


def test_monitoring_objects_are_opt_in(
    chart_with_monitoring_files: Path, rendered: dict[str, str]
) -> None:
    docs = objects(render(chart=chart_with_monitoring_files).stdout)

    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}


def test_the_capture_key_is_32_random_bytes_and_survives_upgrades() -> None:
    first, second = (
        find(objects(render().stdout), "Secret", f"{RELEASE}-capture-key") for _ in range(2)
    )
    keys = [base64.b64decode(base64.b64decode(s["data"]["keys"])) for s in (first, second)]
    assert all(len(k) == 32 for k in keys)
    assert keys[0] != keys[1]  # fresh per install (helm template has no cluster to look up)
    assert first["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    template = (CHART / "templates" / "collector-capture-key.yaml").read_text()
    assert 'lookup "v1" "Secret"' in template  # an upgrade reuses the installed key
