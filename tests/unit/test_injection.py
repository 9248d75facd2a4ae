"""Sidecar injection, specified by golden files and tables.

Golden files (Istio's inject_test.go style), in ``testdata/injection/``:

- ``X.yaml``: two YAML documents. The first says where the pod is admitted::

      # what this case shows (a comment, read by people)
      namespace: team-a                 # the AdmissionReview's request.namespace
      namespaceLabels: {...}            # default {}
      policies: [...]                   # default: DEFAULT_POLICIES below
      settings: {log_level: debug}      # SidecarSettings overrides, default none

  A policy entry is ``{name, selector, ready (true), hash, secretRefs, providerKeyRefs
  (default: secretRefs), overrideAppEnv (false)}``, camelCase as on the wire.
  The second document is the pod, as the API server hands it to the webhook.
- ``X.yaml.injected``: the injected pod, preceded by ``# warning:`` lines if any; or
- ``X.yaml.skip``: the skip reason (code and message).

Refresh every golden after an intended change, then review the diff::

    REFRESH_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_injection.py

A golden file without an input, or an input with both kinds of golden, fails
``test_no_unused_goldens``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jsonpatch  # kopf's dependency: an independent RFC 6902 implementation to check ours
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aiguard_api import constants
from aiguard_api.audit import COLLECTOR_TOKEN_FILE
from aiguard_api.policy import AIPolicy, LabelSelector, SecretKeyRef
from aiguard_operator import injection
from aiguard_operator.injection import (
    ALL_SKIP_REASONS,
    InjectionPlan,
    PolicyChoice,
    PolicyInfo,
    SidecarSettings,
    Skip,
    SkipReason,
)

TESTDATA = Path(__file__).parent / "testdata" / "injection"
REFRESH = os.environ.get("REFRESH_GOLDEN") == "1"
OPERATOR_NAMESPACE = "aiguard-system"
SETTINGS = SidecarSettings(image="ghcr.io/aiguard/aiguard-sidecar:0.1.0", version="0.1.0")
DEFAULT_POLICIES: list[dict[str, Any]] = [
    {
        "name": "assistant",
        "selector": {"matchLabels": {"app": "assistant"}},
        "secretRefs": [
            {"name": "openai-key", "key": "api-key"},
            {"name": "anthropic-key", "key": "api-key"},
        ],
    }
]

# --------------------------------------------------------------------------------------------
# Golden cases


def fake_hash(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def policy_info(doc: dict[str, Any]) -> PolicyInfo:
    refs = tuple(SecretKeyRef.model_validate(r) for r in doc.get("secretRefs", []))
    provider = doc.get("providerKeyRefs")
    return PolicyInfo(
        name=doc["name"],
        selector=LabelSelector.model_validate(doc.get("selector", {})),
        compiled_hash=doc.get("hash", fake_hash(doc["name"])),
        configmap=constants.configmap_name(doc["name"]),
        ready=doc.get("ready", True),
        secret_refs=refs,
        provider_key_refs=refs
        if provider is None
        else tuple(SecretKeyRef.model_validate(r) for r in provider),
        override_app_env=doc.get("overrideAppEnv", False),
    )


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    namespace: str
    namespace_labels: dict[str, str]
    policies: tuple[PolicyInfo, ...]
    settings: SidecarSettings
    pod: dict[str, Any]

    def decide(self, pod: dict[str, Any] | None = None) -> injection.Decision:
        return injection.decide(
            self.pod if pod is None else pod,
            namespace=self.namespace,
            namespace_labels=self.namespace_labels,
            policies=self.policies,
            settings=self.settings,
            operator_namespace=OPERATOR_NAMESPACE,
        )


def load_case(path: Path) -> Case:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, f"{path.name}: expected a front-matter document and a pod"
    front, pod = docs
    return Case(
        name=path.name,
        path=path,
        namespace=front["namespace"],
        namespace_labels=front.get("namespaceLabels") or {},
        policies=tuple(policy_info(p) for p in front.get("policies", DEFAULT_POLICIES)),
        settings=replace(SETTINGS, **(front.get("settings") or {})),
        pod=pod,
    )


def inputs() -> list[Path]:
    return sorted(TESTDATA.glob("*.yaml"))


def cases() -> list[Case]:
    return [load_case(p) for p in inputs()]


def injected_cases() -> list[Case]:
    return [c for c in cases() if c.decide().skip is None]


def dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=100)


def render(decision: injection.Decision) -> tuple[str, str]:
    """(suffix, text) of the golden for a decision."""
    if decision.skip is not None:
        reason = decision.skip
        return ".skip", dump({"reason": reason.code, "message": reason.message})
    header = "".join(f"# warning: {w}\n" for w in decision.warnings)
    return ".injected", header + dump(decision.pod)


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name.removesuffix(".yaml"))
def test_golden(case: Case) -> None:
    suffix, actual = render(case.decide())
    golden = case.path.with_name(case.name + suffix)
    other = case.path.with_name(case.name + (".skip" if suffix == ".injected" else ".injected"))
    if REFRESH:
        golden.write_text(actual)
        other.unlink(missing_ok=True)
    assert golden.exists(), f"no golden for {case.name}; run with REFRESH_GOLDEN=1"
    assert not other.exists(), f"{other.name} contradicts {golden.name}"
    assert actual == golden.read_text()


def test_no_unused_goldens() -> None:
    names = {p.name for p in inputs()}
    goldens = [*TESTDATA.glob("*.yaml.injected"), *TESTDATA.glob("*.yaml.skip")]
    unused = sorted(g.name for g in goldens if g.name.rsplit(".", 1)[0] not in names)
    assert not unused, f"golden files without an input: {unused}"
    both = sorted(
        n
        for n in names
        if (TESTDATA / f"{n}.injected").exists() and (TESTDATA / f"{n}.skip").exists()
    )
    assert not both, f"inputs with both an .injected and a .skip golden: {both}"
    others = sorted(
        p.name for p in TESTDATA.iterdir() if not re.search(r"\.yaml(\.injected|\.skip)?$", p.name)
    )
    assert not others, f"unexpected files in {TESTDATA}: {others}"


def test_golden_cases_cover_every_injection_skip_reason() -> None:
    seen = {c.decide().skip for c in cases()} - {None}
    # mirror pods and Windows pods are specified by the tables below only
    missing = set(ALL_SKIP_REASONS) - seen - {Skip.MIRROR_POD, Skip.WINDOWS_POD}
    assert not missing, sorted(r.code for r in missing)


# --------------------------------------------------------------------------------------------
# Properties every injected golden case must have


@pytest.fixture(params=injected_cases(), ids=lambda c: c.name.removesuffix(".yaml"))
def injected(request: pytest.FixtureRequest) -> tuple[Case, injection.Decision]:
    case: Case = request.param
    return case, case.decide()


def test_when_injected_then_input_is_not_modified(injected: tuple[Case, Any]) -> None:
    case, _ = injected
    before = copy.deepcopy(case.pod)
    case.decide()
    assert case.pod == before


def test_when_injected_twice_then_nothing_changes(injected: tuple[Case, Any]) -> None:
    case, decision = injected
    assert injection.inject(decision.pod, decision.plan) == decision.pod
    assert case.decide(decision.pod).skip == Skip.ALREADY_INJECTED


def test_when_uninjected_then_the_original_pod_comes_back(injected: tuple[Case, Any]) -> None:
    case, decision = injected
    restored = injection.uninject(decision.pod)
    if case.name == "override-app-env.yaml":
        # Documented exception: a literal API key the injection replaced is never copied into
        # the status annotation, so removal drops it rather than restoring it.
        assert restored != case.pod
        assert "sk-" not in json.dumps(decision.pod["metadata"].get("annotations", {}))
        return
    assert restored == case.pod


def test_when_patched_then_the_patch_gives_the_injected_pod(injected: tuple[Case, Any]) -> None:
    case, decision = injected
    ops = injection.json_patch(case.pod, decision.pod)
    assert jsonpatch.apply_patch(case.pod, ops) == decision.pod
    # an insertion, never a rewrite of the user's containers
    assert not any(o["path"] in ("", "/spec", "/spec/containers") for o in ops)


def test_secrets_are_mounted_into_the_sidecar_only(injected: tuple[Case, Any]) -> None:
    _, decision = injected
    spec = decision.pod["spec"]
    ours = {
        v["name"] for v in spec["volumes"] if "secret" in v and v["name"].startswith("aiguard-")
    }
    assert ours, "every test policy has a Secret"
    for c in spec.get("initContainers", []) + spec["containers"]:
        mounted = {m["name"] for m in c.get("volumeMounts", [])}
        if c["name"] == constants.SIDECAR_CONTAINER_NAME:
            assert ours <= mounted
        else:
            assert not mounted & ours, c["name"]
    for v in spec["volumes"]:
        if v["name"] in ours:
            assert v["secret"]["defaultMode"] == 0o444
            assert all(i["key"] == i["path"] for i in v["secret"]["items"])


def test_the_collector_token_is_projected_into_the_sidecar_only(injected: tuple[Case, Any]) -> None:
    case, decision = injected
    spec = decision.pod["spec"]
    tokens = [v for v in spec["volumes"] if v["name"] == injection.COLLECTOR_TOKEN_VOLUME]
    if not case.settings.collector_url:
        assert not tokens
        return
    (volume,) = tokens
    (source,) = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == case.settings.collector_audience
    for c in spec.get("initContainers", []) + spec["containers"]:
        mounted = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if c["name"] == constants.SIDECAR_CONTAINER_NAME:
            token_dir = mounted[injection.COLLECTOR_TOKEN_VOLUME]
            path = f"{token_dir}/{source['serviceAccountToken']['path']}"
            assert path == COLLECTOR_TOKEN_FILE  # where the sidecar reads it by default
            assert env["AIGUARD_COLLECTOR_URL"] == case.settings.collector_url
        else:
            assert injection.COLLECTOR_TOKEN_VOLUME not in mounted, c["name"]
            assert "AIGUARD_COLLECTOR_URL" not in env, c["name"]


def test_sidecar_is_a_hardened_native_sidecar_started_first(injected: tuple[Case, Any]) -> None:
    _, decision = injected
    sidecar = decision.pod["spec"]["initContainers"][0]
    assert sidecar["name"] == constants.SIDECAR_CONTAINER_NAME
    assert sidecar["restartPolicy"] == "Always"
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz")):
        assert sidecar[probe]["httpGet"] == {"path": path, "port": 15090, "scheme": "HTTP"}
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["args"] == [
        "--policy",
        "/etc/aiguard/policy/config.json",
        "--listen",
        "127.0.0.1:15080",
        "--admin",
        "0.0.0.0:15090",
    ]


def test_every_app_container_routes_through_the_sidecar(injected: tuple[Case, Any]) -> None:
    _case, decision = injected
    spec = decision.pod["spec"]
    for c in spec.get("initContainers", [])[1:] + spec["containers"]:
        env = {e["name"]: e for e in c["env"]}
        assert set(constants.APP_ENV) <= set(env), c["name"]
        for url, key in injection.PROVIDER_KEY_OF_URL.items():
            ours = env[url].get("value", "").startswith("http://127.0.0.1:")
            assert not ours or key in env, (c["name"], key)
        for e in c["env"]:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            assert ref is None or ref["name"] not in {"openai-key", "anthropic-key"}


def test_status_annotation_records_what_was_added(injected: tuple[Case, Any]) -> None:
    _, decision = injected
    status = injection.read_status(decision.pod)
    assert status is not None
    plan = decision.plan
    assert (status["policy"], status["hash"], status["sidecarVersion"]) == (
        plan.policy_name,
        plan.policy_hash,
        plan.version,
    )
    assert status["volumes"] == [v["name"] for v in injection.sidecar_volumes(plan)]
    raw = decision.pod["metadata"]["annotations"][constants.ANNOTATION_STATUS]
    assert "sk-live" not in raw  # credentials never land in metadata


# --------------------------------------------------------------------------------------------
# injection_required, reason by reason


def pod(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    namespace: str = "team-a",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": namespace,
            "labels": {"app": "assistant", **(labels or {})},
            "annotations": dict(annotations or {}),
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
    }


ENABLED = {constants.LABEL_INJECT: constants.INJECT_ENABLED}
DISABLED = {constants.LABEL_INJECT: constants.INJECT_DISABLED}
NS_ENABLED = {constants.LABEL_NS_INJECTION: constants.INJECT_ENABLED}
NS_DISABLED = {constants.LABEL_NS_INJECTION: constants.INJECT_DISABLED}
SIDECAR = {"name": constants.SIDECAR_CONTAINER_NAME, "image": "x", "restartPolicy": "Always"}

REQUIRED_TABLE = [
    pytest.param(pod(ENABLED), {}, None, id="pod_label_opts_in"),
    pytest.param(pod(), NS_ENABLED, None, id="namespace_label_opts_in"),
    pytest.param(pod(), {}, Skip.NOT_OPTED_IN, id="nothing_opts_in"),
    pytest.param(pod(annotations=ENABLED), {}, Skip.NOT_OPTED_IN, id="annotation_cannot_opt_in"),
    pytest.param(
        pod(DISABLED),
        NS_ENABLED,
        Skip.INJECTION_DISABLED_BY_POD,
        id="pod_label_opts_out_of_namespace",
    ),
    pytest.param(
        pod(ENABLED, DISABLED), {}, Skip.INJECTION_DISABLED_BY_POD, id="pod_annotation_opts_out"
    ),
    pytest.param(
        pod(ENABLED), NS_DISABLED, Skip.INJECTION_DISABLED_BY_NAMESPACE, id="namespace_opts_out"
    ),
    pytest.param(
        pod(DISABLED),
        {constants.LABEL_NS_INJECTION: "yes"},
        Skip.INJECTION_DISABLED_BY_POD,
        id="opt_out_beats_invalid",
    ),
    pytest.param(
        pod({constants.LABEL_INJECT: "true"}),
        {},
        Skip.INJECT_VALUE_INVALID,
        id="label_true_is_invalid",
    ),
    pytest.param(
        pod(ENABLED, {constants.ANNOTATION_INJECT: "off"}),
        {},
        Skip.INJECT_VALUE_INVALID,
        id="annotation_typo_is_invalid",
    ),
    pytest.param(
        pod(),
        {constants.LABEL_NS_INJECTION: "true"},
        Skip.INJECT_VALUE_INVALID,
        id="namespace_typo_is_invalid",
    ),
    pytest.param(
        pod(ENABLED, namespace="kube-system"), {}, Skip.NAMESPACE_EXCLUDED, id="kube_system"
    ),
    pytest.param(
        pod(ENABLED, namespace="kube-public"), {}, Skip.NAMESPACE_EXCLUDED, id="kube_public"
    ),
    pytest.param(
        pod(ENABLED, namespace="kube-node-lease"), {}, Skip.NAMESPACE_EXCLUDED, id="kube_node_lease"
    ),
    pytest.param(
        pod(ENABLED, namespace=OPERATOR_NAMESPACE),
        {},
        Skip.NAMESPACE_EXCLUDED,
        id="operator_namespace",
    ),
    pytest.param(
        pod(ENABLED, initContainers=[SIDECAR]),
        {},
        Skip.ALREADY_INJECTED,
        id="sidecar_as_init_container",
    ),
    pytest.param(
        pod(ENABLED, containers=[SIDECAR]), {}, Skip.ALREADY_INJECTED, id="sidecar_as_container"
    ),
    pytest.param(
        pod(ENABLED, {injection.MIRROR_ANNOTATION: "abc"}), {}, Skip.MIRROR_POD, id="mirror_pod"
    ),
    pytest.param(pod(ENABLED, hostNetwork=True), {}, Skip.HOST_NETWORK, id="host_network"),
    pytest.param(pod(ENABLED, hostNetwork=False), {}, None, id="host_network_false"),
    pytest.param(pod(ENABLED, os={"name": "windows"}), {}, Skip.WINDOWS_POD, id="windows"),
    pytest.param(pod(ENABLED, os={"name": "linux"}), {}, None, id="linux"),
    pytest.param(
        pod(ENABLED, volumes=[{"name": "aiguard-policy"}]),
        {},
        Skip.VOLUME_NAME_CONFLICT,
        id="policy_volume_taken",
    ),
    pytest.param(
        pod(ENABLED, volumes=[{"name": "aiguard-secret-x"}]),
        {},
        Skip.VOLUME_NAME_CONFLICT,
        id="secret_volume_taken",
    ),
    pytest.param(
        pod(ENABLED, volumes=[{"name": "aiguard-cache"}]), {}, None, id="other_aiguard_volume_ok"
    ),
    pytest.param(
        pod(ENABLED, containers=[{"name": "a", "ports": [{"containerPort": 15080}]}]),
        {},
        Skip.PORT_CONFLICT,
        id="proxy_port_taken",
    ),
    pytest.param(
        pod(
            ENABLED,
            containers=[{"name": "a", "ports": [{"name": "aiguard-admin", "containerPort": 9}]}],
        ),
        {},
        Skip.PORT_CONFLICT,
        id="admin_port_name_taken",
    ),
    pytest.param(
        {
            "metadata": {"labels": ENABLED, "annotations": None},
            "spec": {"containers": None, "volumes": None},
        },
        {},
        None,
        id="null_fields_tolerated",
    ),
]


@pytest.mark.parametrize(
    ("the_pod", "ns_labels", "expected"),
    REQUIRED_TABLE,
)
def test_injection_required(
    the_pod: dict[str, Any], ns_labels: dict[str, str], expected: SkipReason | None
) -> None:
    namespace = the_pod["metadata"].get("namespace")
    got = injection.injection_required(
        the_pod, ns_labels, operator_namespace=OPERATOR_NAMESPACE, namespace=namespace
    )
    assert got == expected, got.message if got else None


def test_namespace_comes_from_the_request_then_the_pod_then_the_namespace_label() -> None:
    p = pod(ENABLED)
    del p["metadata"]["namespace"]
    ns_label = {injection.NAMESPACE_NAME_LABEL: "kube-system"}
    required = injection.injection_required
    assert required(p, ns_label, operator_namespace="op") == Skip.NAMESPACE_EXCLUDED
    assert required(p, {}, operator_namespace="op", namespace="op") == Skip.NAMESPACE_EXCLUDED
    assert required(p, {}, operator_namespace="op") is None


def test_excluded_namespaces_are_configurable() -> None:
    got = injection.injection_required(
        pod(ENABLED), {}, operator_namespace="op", excluded_namespaces={"team-a"}
    )
    assert got == Skip.NAMESPACE_EXCLUDED
    assert got is not None
    assert got.detail == "namespace team-a"


# --------------------------------------------------------------------------------------------
# choose_policy


def info(name: str, ready: bool = True, **match_labels: str) -> PolicyInfo:
    return PolicyInfo(
        name=name,
        selector=LabelSelector(match_labels=match_labels),
        compiled_hash=fake_hash(name) if ready else None,
        configmap=constants.configmap_name(name),
        ready=ready,
    )


A, B, EVERYTHING = info("a", app="assistant"), info("b", team="x"), info("everything")

CHOICE_TABLE = [
    pytest.param(pod(), [A, B], "a", id="single_selector_match"),
    pytest.param(
        pod(annotations={constants.ANNOTATION_POLICY: "b"}),
        [A, B],
        "b",
        id="annotation_wins_over_selector",
    ),
    pytest.param(
        pod({"team": "x"}, {constants.ANNOTATION_POLICY: "a"}),
        [A, B],
        "a",
        id="annotation_settles_ambiguity",
    ),
    pytest.param(
        pod(annotations={constants.ANNOTATION_POLICY: "c"}),
        [A],
        Skip.ANNOTATED_POLICY_MISSING,
        id="annotation_names_missing_policy",
    ),
    pytest.param(
        pod(annotations={constants.ANNOTATION_POLICY: " "}),
        [A],
        "a",
        id="empty_annotation_is_absent",
    ),
    pytest.param(pod({"app": "other"}), [A, B], Skip.NO_POLICY_MATCHED, id="no_selector_matches"),
    pytest.param(pod(), [], Skip.NO_POLICY_MATCHED, id="no_policies"),
    pytest.param(pod({"team": "x"}), [A, B], Skip.POLICY_AMBIGUOUS, id="two_selectors_match"),
    pytest.param(pod(), [A, EVERYTHING], Skip.POLICY_AMBIGUOUS, id="empty_selector_counts_too"),
    pytest.param(pod(), [EVERYTHING], "everything", id="empty_selector_alone"),
    pytest.param(
        pod(),
        [info("a", ready=False, app="assistant")],
        Skip.POLICY_NOT_READY,
        id="not_ready_by_selector",
    ),
    pytest.param(
        pod(annotations={constants.ANNOTATION_POLICY: "n"}),
        [info("n", ready=False)],
        Skip.POLICY_NOT_READY,
        id="not_ready_by_annotation",
    ),
    pytest.param(
        pod({"team": "x"}),
        [A, info("b", ready=False, team="x")],
        Skip.POLICY_AMBIGUOUS,
        id="not_ready_still_makes_ambiguous",
    ),
]


@pytest.mark.parametrize(
    ("the_pod", "policies", "expected"),
    CHOICE_TABLE,
)
def test_choose_policy(
    the_pod: dict[str, Any], policies: list[PolicyInfo], expected: str | SkipReason
) -> None:
    got = injection.choose_policy(the_pod, policies)
    if isinstance(expected, SkipReason):
        assert got == expected
    else:
        assert isinstance(got, PolicyChoice)
        assert got.policy.name == expected


def test_when_ambiguous_then_the_detail_names_every_candidate() -> None:
    got = injection.choose_policy(pod({"team": "x"}), [B, A])
    assert isinstance(got, SkipReason)
    assert got.detail == "matching: a, b"
    assert got.message.endswith("annotation (matching: a, b).")


def test_policy_info_from_policy() -> None:
    doc: dict[str, Any] = {
        "metadata": {"name": "chat", "namespace": "team-a", "generation": 3},
        "spec": {
            "selector": {"matchLabels": {"app": "chat"}},
            "providers": [
                {
                    "name": "openai",
                    "type": "openai",
                    "baseURL": "https://api.openai.com/v1",
                    "apiKeySecretRef": {"name": "openai-key"},
                    "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
                }
            ],
            "routes": [{"models": ["*"], "targets": [{"provider": "openai"}]}],
            "incidents": {"notify": {"webhookSecretRef": {"name": "slack"}}},
        },
        "status": {
            "compiledHash": "sha256:1",
            "configMap": "aiguard-policy-chat",
            "conditions": [{"type": "Ready", "status": "True", "observedGeneration": 3}],
        },
    }
    got = PolicyInfo.from_policy(AIPolicy.model_validate(doc))
    assert got.is_ready
    assert got.compiled_hash == "sha256:1"
    assert [(r.name, r.key) for r in got.secret_refs] == [
        ("ca", "ca.crt"),
        ("openai-key", "api-key"),
    ]
    assert [(r.name, r.key) for r in got.provider_key_refs] == [("openai-key", "api-key")]
    doc["metadata"]["generation"] = 4  # the Ready condition is for an older generation
    assert not PolicyInfo.from_policy(AIPolicy.model_validate(doc)).is_ready
    assert PolicyInfo.from_policy(AIPolicy.model_validate(doc), ready=True).is_ready


# --------------------------------------------------------------------------------------------
# Skip reasons as data


def test_skip_reasons_are_unique_snake_case_sentences() -> None:
    codes = [r.code for r in ALL_SKIP_REASONS]
    assert len(codes) == len(set(codes))
    for r in ALL_SKIP_REASONS:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", r.code), r.code
        assert r.sentence[0].isupper(), r.code
        assert r.sentence.endswith("."), r.code
        assert re.fullmatch(r"([A-Z][a-z]+)+", r.event_reason), r.event_reason


def test_skip_reason_detail_is_not_part_of_identity() -> None:
    detailed = Skip.HOST_NETWORK.with_detail("pod x")
    assert detailed == Skip.HOST_NETWORK
    assert hash(detailed) == hash(Skip.HOST_NETWORK)
    assert str(detailed) == "host_network"
    assert detailed.message == f"{Skip.HOST_NETWORK.sentence[:-1]} (pod x)."


# --------------------------------------------------------------------------------------------
# Plans, env rules, conflicts, uninject


def plan(**overrides: Any) -> InjectionPlan:
    refs = (SecretKeyRef(name="openai-key"),)
    base = InjectionPlan.for_policy(replace(A, secret_refs=refs, provider_key_refs=refs), SETTINGS)
    return replace(base, **overrides)


def test_plan_refuses_a_policy_that_is_not_ready() -> None:
    with pytest.raises(ValueError, match="not ready"):
        InjectionPlan.for_policy(info("n", ready=False), SETTINGS)


@pytest.mark.parametrize(
    "bad", [{"image": ""}, {"proxy_port": 0}, {"admin_port": 70000}, {"admin_port": 15080}]
)
def test_settings_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
        replace(SETTINGS, **bad)


def test_ports_move_the_env_and_the_probes_together() -> None:
    p = plan(proxy_port=16080, admin_port=16090)
    out = injection.inject(pod(ENABLED), p)
    sidecar = out["spec"]["initContainers"][0]
    assert "127.0.0.1:16080" in sidecar["args"]
    assert "0.0.0.0:16090" in sidecar["args"]
    assert sidecar["readinessProbe"]["httpGet"]["port"] == 16090
    env = {e["name"]: e.get("value") for e in out["spec"]["containers"][0]["env"]}
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:16080/openai/v1"


def test_keys_of_one_secret_share_a_volume_limited_to_those_keys() -> None:
    refs = (
        SecretKeyRef(name="s", key="b"),
        SecretKeyRef(name="s", key="a"),
        SecretKeyRef(name="s", key="a"),
    )
    vols = injection.sidecar_volumes(plan(secret_refs=refs))
    secret = [v for v in vols if "secret" in v]
    assert secret == [
        {
            "name": "aiguard-secret-s",
            "secret": {
                "secretName": "s",
                "items": [{"key": "a", "path": "a"}, {"key": "b", "path": "b"}],
                "defaultMode": 0o444,
            },
        }
    ]


def test_long_secret_names_get_distinct_volume_names() -> None:
    a, b = "x" * 60 + "-a", "x" * 60 + "-b"
    names = {injection.secret_volume_name(a), injection.secret_volume_name(b)}
    assert len(names) == 2
    assert all(len(n) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) for n in names)
    assert injection.secret_volume_name("short") == constants.secret_volume_name("short")


def test_inject_refuses_a_taken_volume_name() -> None:
    with pytest.raises(injection.InjectionConflict, match="aiguard-tmp"):
        injection.inject(pod(ENABLED, volumes=[{"name": "aiguard-tmp", "emptyDir": {}}]), plan())


def test_env_entries_referring_to_a_provider_key_are_replaced_even_without_override() -> None:
    p = pod(ENABLED)
    ref = {"secretKeyRef": {"name": "openai-key", "key": "api-key"}}
    other = {"secretKeyRef": {"name": "db", "key": "password"}}
    p["spec"]["containers"][0]["env"] = [
        {"name": "LLM_KEY", "valueFrom": ref},
        {"name": "DB_PASSWORD", "valueFrom": other},
    ]
    env = injection.inject(p, plan())["spec"]["containers"][0]["env"]
    assert {"name": "LLM_KEY", "value": constants.PLACEHOLDER_KEY} in env
    assert {"name": "DB_PASSWORD", "valueFrom": other} in env


def test_app_env_comes_first_so_user_entries_can_refer_to_it() -> None:
    p = pod(ENABLED)
    p["spec"]["containers"][0]["env"] = [{"name": "U", "value": "$(OPENAI_BASE_URL)/x"}]
    env = injection.inject(p, plan())["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names.index("OPENAI_BASE_URL") < names.index("U") == len(names) - 1


def test_provider_key_map_covers_every_provider_of_the_app_env() -> None:
    assert set(injection.PROVIDER_KEY_OF_URL) == set(constants.APP_ENV)
    assert set(injection.PROVIDER_KEY_OF_URL.values()) == set(constants.APP_PLACEHOLDER_ENV)


def test_an_explicit_base_url_keeps_the_placeholder_key_of_that_provider_out() -> None:
    p = pod(ENABLED)
    p["spec"]["containers"][0]["env"] = [{"name": "ANTHROPIC_BASE_URL", "value": "https://gw"}]
    names = [e["name"] for e in injection.inject(p, plan())["spec"]["containers"][0]["env"]]
    assert "ANTHROPIC_API_KEY" not in names
    assert {"OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"} <= set(names)
    overriding = injection.inject(p, plan(override_app_env=True))["spec"]["containers"][0]["env"]
    assert {"name": "ANTHROPIC_API_KEY", "value": constants.PLACEHOLDER_KEY} in overriding


def test_mutator_applies_inject_in_place_for_kopf() -> None:
    body = pod(ENABLED)
    injection.mutator(plan())(body)
    assert body == injection.inject(pod(ENABLED), plan())


def test_uninject_without_status_is_a_copy() -> None:
    p = pod(ENABLED, initContainers=[SIDECAR])
    out = injection.uninject(p)
    assert out == p
    assert out is not p


def test_read_status_ignores_what_is_not_ours() -> None:
    for raw in ("not json", "[]", '{"hash": "x"}'):
        assert injection.read_status(pod(annotations={constants.ANNOTATION_STATUS: raw})) is None


def test_decide_warns_about_secret_mounts_it_cannot_remove() -> None:
    case = load_case(TESTDATA / "provider-secret-in-app.yaml")
    warnings = case.decide().warnings
    assert any("mounts Secret openai-key (volume keys)" in w for w in warnings)
    assert any("key 'api-key' is not a portable env var name" in w for w in warnings)


# --------------------------------------------------------------------------------------------
# json_patch


PATCH_TABLE = [
    pytest.param({"a": 1}, {"a": 1}, [], id="equal"),
    pytest.param({}, {"a": 1}, [{"op": "add", "path": "/a", "value": 1}], id="add_key"),
    pytest.param({"a": 1}, {}, [{"op": "remove", "path": "/a"}], id="remove_key"),
    pytest.param(
        {"a": 1}, {"a": 2}, [{"op": "replace", "path": "/a", "value": 2}], id="replace_value"
    ),
    pytest.param(
        {"a": 1},
        {"a": True},
        [{"op": "replace", "path": "/a", "value": True}],
        id="bool_is_not_int",
    ),
    pytest.param(
        {}, {"a/b~c": 1}, [{"op": "add", "path": "/a~1b~0c", "value": 1}], id="escape_slash_tilde"
    ),
    pytest.param([1, 2], [0, 1, 2], [{"op": "add", "path": "/0", "value": 0}], id="insert_front"),
    pytest.param([1, 3], [1, 2, 3], [{"op": "add", "path": "/1", "value": 2}], id="insert_middle"),
    pytest.param([1], [1, 2], [{"op": "add", "path": "/1", "value": 2}], id="append"),
    pytest.param(
        [1, 2, 2, 3],
        [1, 3],
        [{"op": "remove", "path": "/1"}, {"op": "remove", "path": "/1"}],
        id="remove_middle",
    ),
    pytest.param(
        {"s": {"c": [{"n": 1}]}},
        {"s": {"c": [{"n": 2}]}},
        [{"op": "replace", "path": "/s/c/0/n", "value": 2}],
        id="nested",
    ),
    pytest.param(
        {"a": [1]},
        {"a": {"b": 1}},
        [{"op": "replace", "path": "/a", "value": {"b": 1}}],
        id="type_change",
    ),
    pytest.param([1], {"a": 1}, [{"op": "replace", "path": "", "value": {"a": 1}}], id="root"),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    PATCH_TABLE,
)
def test_json_patch(old: Any, new: Any, expected: list[dict[str, Any]]) -> None:
    ops = injection.json_patch(old, new)
    assert ops == expected
    assert jsonpatch.apply_patch(old, ops) == new


def test_json_patch_values_are_copies() -> None:
    new = {"a": {"b": [1]}}
    ops = injection.json_patch({}, new)
    new["a"]["b"].append(2)
    assert ops[0]["value"] == {"b": [1]}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "a", "a/b", "~"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "c/d", "e~f"]), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(JSON, JSON)
def test_json_patch_turns_any_document_into_any_other(old: Any, new: Any) -> None:
    ops = injection.json_patch(old, new)
    got = jsonpatch.apply_patch(copy.deepcopy(old), ops)
    assert injection.json_equal(got, new), json.dumps({"old": old, "new": new, "ops": ops})
