"""Sidecar injection: decide, plan and mutate a Pod. Pure functions: no kopf, no I/O.

The mutating admission handler is a thin adapter around this module (Istio's ``injectPod``
shape: pod + parameters in, pod or skip reason out)::

    decision = injection.decide(
        pod,
        namespace=request_namespace,
        namespace_labels=ns_labels,
        policies=[injection.PolicyInfo.from_policy(p) for p in policies_in_namespace],
        settings=sidecar_settings,
        operator_namespace=own_namespace,
    )
    if decision.skip:        # log, Event, metric label: decision.skip.code
        ...                  # allow the pod unchanged
    else:                    # either kopf diffs it ...
        patch.fns.append(injection.mutator(decision.plan))
        # ... or send injection.json_patch(pod, decision.pod) yourself
        warnings.extend(decision.warnings)

Building blocks, each usable alone::

    injection_required(pod, ns_labels, *, operator_namespace) -> SkipReason | None
    choose_policy(pod, policies)                    -> PolicyChoice | SkipReason
    InjectionPlan.for_policy(policy, settings)      -> InjectionPlan
    inject(pod, plan)                               -> new pod (the input is untouched)
    uninject(pod)                                   -> new pod without what inject added
    secret_exposures(pod, plan)                     -> warnings for the admission response
    json_patch(old, new)                            -> RFC 6902 operations

Kubernetes objects are plain ``dict[str, Any]``: they arrive as JSON from the AdmissionReview
*before* the API server validated them (mutating admission runs first), so any field may be
missing or ``null``. A TypedDict of the whole PodSpec would promise a shape nobody checked; the
few fields read here go through small accessors that tolerate absence. The records this module
owns (plans, choices, the status annotation) are typed dataclasses and TypedDicts.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Final, Literal, NotRequired, TypedDict

from aiguard_api import constants
from aiguard_api.audit import COLLECTOR_AUDIENCE, COLLECTOR_TOKEN_FILE
from aiguard_api.policy import AIPolicy, LabelSelector, SecretKeyRef

Pod = dict[str, Any]
"""A Pod as JSON. See the module docstring for why this is not a TypedDict."""

# --------------------------------------------------------------------------------------------
# Skip reasons: data, reused in logs, Events (reason + message) and as a metric label value.


@dataclass(frozen=True)
class SkipReason:
    """Why a pod was not injected.

    ``code`` is stable snake_case (a metric label value); ``sentence`` explains it to a human;
    ``warning`` is True when the pod asked for the sidecar and runs without it (Event type
    Warning, and a coverage gap), False when skipping is the expected outcome. ``detail``
    names the specific pod, policy or volume; it is not part of equality, so
    ``reason == Skip.HOST_NETWORK`` holds whatever the detail.
    """

    code: str
    sentence: str
    warning: bool = False
    detail: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.code

    def with_detail(self, detail: str) -> SkipReason:
        return dataclasses.replace(self, detail=detail)

    @property
    def message(self) -> str:
        """The sentence plus the detail: the Event message and the log line."""
        if not self.detail:
            return self.sentence
        return f"{self.sentence.removesuffix('.')} ({self.detail})."

    @property
    def event_reason(self) -> str:
        """UpperCamelCase, as Kubernetes Event reasons are spelled (``HostNetwork``)."""
        return "".join(part.capitalize() for part in self.code.split("_"))


class Skip:
    """Every reason to skip injection, in the order they are checked."""

    # injection_required: namespace and opt-in/opt-out
    NAMESPACE_EXCLUDED: Final = SkipReason(
        "namespace_excluded",
        "The namespace is a Kubernetes system namespace or the operator's own; aiguard never "
        "injects there.",
    )
    INJECTION_DISABLED_BY_POD: Final = SkipReason(
        "injection_disabled_by_pod",
        f"The pod opts out with {constants.LABEL_INJECT}: {constants.INJECT_DISABLED}.",
    )
    INJECT_VALUE_INVALID: Final = SkipReason(
        "inject_value_invalid",
        f"The value of {constants.LABEL_INJECT} (or {constants.LABEL_NS_INJECTION}) must be "
        f"{constants.INJECT_ENABLED!r} or {constants.INJECT_DISABLED!r}; another value is not "
        "guessed at.",
        warning=True,
    )
    INJECTION_DISABLED_BY_NAMESPACE: Final = SkipReason(
        "injection_disabled_by_namespace",
        f"The namespace opts out with {constants.LABEL_NS_INJECTION}: {constants.INJECT_DISABLED}.",
    )
    NOT_OPTED_IN: Final = SkipReason(
        "not_opted_in",
        f"Neither the pod label {constants.LABEL_INJECT} nor the namespace label "
        f"{constants.LABEL_NS_INJECTION} is {constants.INJECT_ENABLED!r}.",
    )
    # injection_required: pods that opted in but cannot carry the sidecar
    ALREADY_INJECTED: Final = SkipReason(
        "already_injected",
        f"The pod already has a container named {constants.SIDECAR_CONTAINER_NAME}.",
    )
    MIRROR_POD: Final = SkipReason(
        "mirror_pod",
        "The pod is the API server's mirror of a static pod; the kubelet runs it from a file "
        "on the node, so a changed mirror would change nothing.",
        warning=True,
    )
    HOST_NETWORK: Final = SkipReason(
        "host_network",
        "The pod uses the node's network namespace; the sidecar's ports would be the node's.",
        warning=True,
    )
    WINDOWS_POD: Final = SkipReason(
        "windows_pod",
        "The pod runs on Windows; the sidecar is a Linux container.",
        warning=True,
    )
    VOLUME_NAME_CONFLICT: Final = SkipReason(
        "volume_name_conflict",
        "The pod already has a volume with a name injection uses; rename it.",
        warning=True,
    )
    PORT_CONFLICT: Final = SkipReason(
        "port_conflict",
        "A container of the pod declares a port the sidecar listens on.",
        warning=True,
    )
    # choose_policy
    ANNOTATED_POLICY_MISSING: Final = SkipReason(
        "annotated_policy_missing",
        f"The AIPolicy named by the {constants.ANNOTATION_POLICY} annotation does not exist in "
        "the pod's namespace.",
        warning=True,
    )
    NO_POLICY_MATCHED: Final = SkipReason(
        "no_policy_matched",
        "No AIPolicy in the pod's namespace selects the pod.",
        warning=True,
    )
    POLICY_AMBIGUOUS: Final = SkipReason(
        "policy_ambiguous",
        f"Several AIPolicies select the pod; name one with the {constants.ANNOTATION_POLICY} "
        "annotation.",
        warning=True,
    )
    POLICY_NOT_READY: Final = SkipReason(
        "policy_not_ready",
        "The chosen AIPolicy has no compiled configuration yet: it is invalid or not yet "
        "reconciled.",
        warning=True,
    )


ALL_SKIP_REASONS: Final[tuple[SkipReason, ...]] = tuple(
    v for v in vars(Skip).values() if isinstance(v, SkipReason)
)

# --------------------------------------------------------------------------------------------
# Names injection uses. Volume names and the env of the sidecar are spelled once, here.
# (The sidecar reads the env names below; they belong in aiguard_api.constants eventually.)

POLICY_VOLUME: Final = "aiguard-policy"
SPOOL_VOLUME: Final = "aiguard-spool"
TMP_VOLUME: Final = "aiguard-tmp"
COLLECTOR_TOKEN_VOLUME: Final = "aiguard-collector-token"  # noqa: S105 (a volume name)
SECRET_VOLUME_PREFIX: Final = "aiguard-secret-"  # noqa: S105 (a volume name, not a secret)
FIXED_VOLUMES: Final = frozenset({POLICY_VOLUME, SPOOL_VOLUME, TMP_VOLUME, COLLECTOR_TOKEN_VOLUME})
ADMIN_PORT_NAME: Final = "aiguard-admin"

ENV_POD_NAME: Final = "POD_NAME"
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"
ENV_POD_UID: Final = "POD_UID"
ENV_SERVICE_ACCOUNT: Final = "SERVICE_ACCOUNT"
ENV_LOG_LEVEL: Final = "AIGUARD_LOG_LEVEL"
ENV_COLLECTOR_URL: Final = "AIGUARD_COLLECTOR_URL"
ENV_COLLECTOR_CA_FILE: Final = "AIGUARD_COLLECTOR_CA_FILE"

# Each base URL variable, and the API key variable of the same provider.
PROVIDER_KEY_OF_URL: Final = {
    "OPENAI_BASE_URL": "OPENAI_API_KEY",
    "ANTHROPIC_BASE_URL": "ANTHROPIC_API_KEY",
    "AZURE_OPENAI_ENDPOINT": "AZURE_OPENAI_API_KEY",
}

SIDECAR_UID: Final = 65532  # "nonroot" in distroless images
# Secret and ConfigMap files are written by the kubelet as root:root (unless the pod sets
# fsGroup, which injection must not change for the app's sake). 0400 would be unreadable by
# the non-root sidecar; 0444 is readable only where the volume is mounted: the sidecar alone.
FILE_MODE: Final = 0o444

SYSTEM_NAMESPACES: Final = frozenset({"kube-system", "kube-public", "kube-node-lease"})
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
MIRROR_ANNOTATION: Final = "kubernetes.io/config.mirror"

_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# --------------------------------------------------------------------------------------------
# Small accessors for JSON that may have missing or null fields


def _map(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    return value if isinstance(value, list) else []


def _str_map(obj: Mapping[str, Any], key: str) -> dict[str, str]:
    return {k: v for k, v in _map(obj, key).items() if isinstance(v, str)}


def _containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Init containers then containers (the pod's start order), skipping malformed entries."""
    return [
        c
        for key in ("initContainers", "containers")
        for c in _list(spec, key)
        if isinstance(c, dict)
    ]


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    """True when a container (init or regular) is named like the sidecar."""
    spec = _map(pod, "spec")
    return any(c.get("name") == constants.SIDECAR_CONTAINER_NAME for c in _containers(spec))


# --------------------------------------------------------------------------------------------
# injection_required: every pod- and namespace-level reason to skip, in one place


def injection_required(
    pod: Mapping[str, Any],
    namespace_labels: Mapping[str, str],
    *,
    operator_namespace: str,
    namespace: str | None = None,
    excluded_namespaces: Iterable[str] = SYSTEM_NAMESPACES,
    ports: Iterable[int] = (constants.SIDECAR_PROXY_PORT, constants.SIDECAR_ADMIN_PORT),
) -> SkipReason | None:
    """None when the pod should get the sidecar, else the first reason it should not.

    ``namespace`` is the AdmissionReview's ``request.namespace`` (a pod being created may not
    carry ``metadata.namespace`` yet); without it the pod's, then the namespace's
    ``kubernetes.io/metadata.name`` label is used. Policy reasons are ``choose_policy``'s.
    """
    meta = _map(pod, "metadata")
    spec = _map(pod, "spec")
    labels = _str_map(meta, "labels")
    annotations = _str_map(meta, "annotations")
    ns = namespace or meta.get("namespace") or namespace_labels.get(NAMESPACE_NAME_LABEL, "")

    # Control-plane pods must never depend on the webhook or the sidecar image: a kube-system
    # pod that cannot start would keep the cluster from healing itself. The operator's own
    # pods serve the webhook; injecting them would make the webhook wait on itself.
    # (The webhook's namespaceSelector excludes these too; this is the second line.)
    if ns and (ns in set(excluded_namespaces) or ns == operator_namespace):
        return Skip.NAMESPACE_EXCLUDED.with_detail(f"namespace {ns}")

    # An explicit opt-out on the pod wins over every opt-in, the namespace's included: the
    # workload's owner knows it calls no LLM (a batch job, a debug pod).
    pod_label = labels.get(constants.LABEL_INJECT)
    pod_annotation = annotations.get(constants.ANNOTATION_INJECT)
    if pod_label == constants.INJECT_DISABLED:
        return Skip.INJECTION_DISABLED_BY_POD.with_detail("by label")
    if pod_annotation == constants.INJECT_DISABLED:
        return Skip.INJECTION_DISABLED_BY_POD.with_detail("by annotation")

    # A value other than enabled/disabled is a typo ("true", "yes"). Guessing either way is
    # wrong for a security control, so the owner gets a Warning Event naming the value.
    valid = (constants.INJECT_ENABLED, constants.INJECT_DISABLED)
    ns_value = namespace_labels.get(constants.LABEL_NS_INJECTION)
    for where, value in (
        (f"pod label {constants.LABEL_INJECT}", pod_label),
        (f"pod annotation {constants.ANNOTATION_INJECT}", pod_annotation),
        (f"namespace label {constants.LABEL_NS_INJECTION}", ns_value),
    ):
        if value is not None and value not in valid:
            return Skip.INJECT_VALUE_INVALID.with_detail(f"{where}: {value!r}")

    # The platform team turned injection off for the whole namespace; as with Istio's
    # `istio-injection=disabled`, that wins over a pod's opt-in.
    if ns_value == constants.INJECT_DISABLED:
        return Skip.INJECTION_DISABLED_BY_NAMESPACE.with_detail(f"namespace {ns}")

    # Injection is opt-in: by the pod's label, or by its namespace's. The annotation only opts
    # out, because the webhook's objectSelector (which keeps unrelated pods away from the
    # webhook entirely) can only see labels.
    if pod_label != constants.INJECT_ENABLED and ns_value != constants.INJECT_ENABLED:
        detail = ""
        if pod_annotation == constants.INJECT_ENABLED:
            detail = f"the annotation cannot opt in; set the label {constants.LABEL_INJECT}"
        return Skip.NOT_OPTED_IN.with_detail(detail)

    # Admission can run twice for one pod (reinvocationPolicy: IfNeeded, another webhook's
    # change), and manifests get copied from injected pods: a second sidecar would be a
    # duplicate container name. A hand-added sidecar is respected as it is.
    if has_sidecar(pod):
        return Skip.ALREADY_INJECTED

    # Mirror pods are read-only reflections of static pods defined on the node.
    if MIRROR_ANNOTATION in annotations:
        return Skip.MIRROR_POD

    # With hostNetwork, 127.0.0.1:15080 is the node's loopback: every hostNetwork pod on the
    # node would share one proxy port (only one can bind it), and the admin port would be
    # exposed on the node's addresses.
    if spec.get("hostNetwork") is True:
        return Skip.HOST_NETWORK

    # The sidecar image is Linux-only, and the API server rejects the Linux securityContext
    # fields the sidecar needs (runAsUser, seccompProfile) on Windows pods.
    if _map(spec, "os").get("name") == "windows":
        return Skip.WINDOWS_POD

    # Names are refused, not suffixed: predictable names keep `uninject`, dashboards and
    # `kubectl describe` simple, and a clash almost always means a manifest copied from an
    # injected pod, which its owner should clean up (the Event names the volume).
    clashes = sorted(
        name
        for v in _list(spec, "volumes")
        if isinstance(v, Mapping)
        and isinstance(name := v.get("name"), str)
        and (name in FIXED_VOLUMES or name.startswith(SECRET_VOLUME_PREFIX))
    )
    if clashes:
        return Skip.VOLUME_NAME_CONFLICT.with_detail("volume " + ", ".join(clashes))

    # Containers share the pod's network namespace: if one already listens on a sidecar port,
    # the sidecar cannot bind it, never becomes ready, and the app never starts.
    # (Only declared ports can be seen; undeclared ones fail at runtime, visibly.)
    taken = set(ports)
    for c in _containers(spec):
        for p in _list(c, "ports"):
            if isinstance(p, Mapping) and (
                p.get("containerPort") in taken or p.get("name") == ADMIN_PORT_NAME
            ):
                return Skip.PORT_CONFLICT.with_detail(
                    f"container {c.get('name')} port {p.get('name') or p.get('containerPort')}"
                )
    return None


# --------------------------------------------------------------------------------------------
# Policies and the choice between them


def _ref_key(ref: SecretKeyRef) -> tuple[str, str]:
    return (ref.name, ref.key)


def _unique_refs(refs: Iterable[SecretKeyRef]) -> tuple[SecretKeyRef, ...]:
    seen: dict[tuple[str, str], SecretKeyRef] = {}
    for r in refs:
        seen.setdefault(_ref_key(r), r)
    return tuple(sorted(seen.values(), key=_ref_key))


@dataclass(frozen=True, kw_only=True)
class PolicyInfo:
    """What injection needs to know of one AIPolicy (in the pod's namespace)."""

    name: str
    selector: LabelSelector = field(default_factory=LabelSelector)
    compiled_hash: str | None = None
    """``status.compiledHash``: the ``sha256:`` content hash of the compiled config."""
    configmap: str | None = None
    """Name of the ConfigMap holding the compiled config."""
    ready: bool = False
    """The compiled ConfigMap exists for the current generation."""
    secret_refs: tuple[SecretKeyRef, ...] = ()
    """Every Secret key the sidecar reads (``AIPolicySpec.sidecar_secret_refs()``)."""
    provider_key_refs: tuple[SecretKeyRef, ...] = ()
    """Provider API keys among them: app containers must never resolve these."""
    override_app_env: bool = False
    """Replace app env the user set explicitly (no AIPolicy field yet; see module report)."""

    @property
    def is_ready(self) -> bool:
        return self.ready and bool(self.compiled_hash) and bool(self.configmap)

    @classmethod
    def from_policy(cls, policy: AIPolicy, *, ready: bool | None = None) -> PolicyInfo:
        """From the typed resource. ``ready`` defaults to: the status has a compiled hash and
        a ``Ready=True`` condition for the current generation."""
        status = policy.status
        if ready is None:
            ready = bool(
                status is not None
                and status.compiled_hash
                and any(
                    c.type == "Ready"
                    and c.status == "True"
                    and c.observed_generation in (None, policy.metadata.generation)
                    for c in status.conditions
                )
            )
        return cls(
            name=policy.metadata.name,
            selector=policy.spec.selector,
            compiled_hash=status.compiled_hash if status else None,
            configmap=(status.config_map if status else None)
            or constants.configmap_name(policy.metadata.name),
            ready=ready,
            secret_refs=_unique_refs(policy.spec.sidecar_secret_refs()),
            provider_key_refs=_unique_refs(
                p.api_key_secret_ref for p in policy.spec.providers if p.api_key_secret_ref
            ),
        )


@dataclass(frozen=True)
class PolicyChoice:
    policy: PolicyInfo
    by: Literal["annotation", "selector"]


def choose_policy(
    pod: Mapping[str, Any], policies: Iterable[PolicyInfo]
) -> PolicyChoice | SkipReason:
    """The AIPolicy for the pod, or why there is none.

    ``policies`` are those of the pod's namespace. The ``aiguard.dev/policy`` annotation wins
    (whether or not that policy's selector matches); else exactly one selector must match.
    Several matches are refused rather than ranked: precedence rules between selectors are
    a surprise waiting to happen in an audit, and the annotation resolves it in one line.
    """
    candidates = list(policies)
    meta = _map(pod, "metadata")
    wanted = _str_map(meta, "annotations").get(constants.ANNOTATION_POLICY, "").strip()
    choice: PolicyChoice
    if wanted:
        found = next((p for p in candidates if p.name == wanted), None)
        if found is None:
            return Skip.ANNOTATED_POLICY_MISSING.with_detail(
                f"{constants.ANNOTATION_POLICY}: {wanted}"
            )
        choice = PolicyChoice(found, "annotation")
    else:
        labels = _str_map(meta, "labels")
        matching = [p for p in candidates if p.selector.matches(labels)]
        if not matching:
            return Skip.NO_POLICY_MATCHED
        if len(matching) > 1:
            names = ", ".join(sorted(p.name for p in matching))
            return Skip.POLICY_AMBIGUOUS.with_detail(f"matching: {names}")
        choice = PolicyChoice(matching[0], "selector")
    if not choice.policy.is_ready:
        return Skip.POLICY_NOT_READY.with_detail(f"policy {choice.policy.name}")
    return choice


# --------------------------------------------------------------------------------------------
# The plan


def _default_resources() -> dict[str, dict[str, str]]:
    # No CPU limit: throttling a proxy on the request path adds latency to every LLM call.
    return {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


@dataclass(frozen=True, kw_only=True)
class SidecarSettings:
    """Operator-wide sidecar settings (Helm values / operator environment)."""

    image: str
    """Sidecar image reference, e.g. ``ghcr.io/aiguard/aiguard-sidecar:0.1.0``."""
    version: str
    """Sidecar version recorded in the status annotation."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    resources: dict[str, dict[str, str]] = field(default_factory=_default_resources)
    """Container resources; default requests 100m CPU / 128Mi, limit 512Mi memory."""
    spool_size: str = "1Gi"
    """``sizeLimit`` of the audit spool emptyDir (a Kubernetes quantity)."""
    tmp_size: str = "64Mi"
    """``sizeLimit`` of the sidecar's /tmp emptyDir."""
    proxy_port: int = constants.SIDECAR_PROXY_PORT
    """Proxy port on 127.0.0.1; the app env points here."""
    admin_port: int = constants.SIDECAR_ADMIN_PORT
    """Admin port on all interfaces: /metrics, /healthz, /readyz (the probes)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    collector_url: str | None = None
    """Where sidecars ship audit events (the operator's collector Service); None: the
    sidecar only logs them. With a URL the sidecar gets a projected ServiceAccount token for
    the collector's audience, and nothing else of the pod's identity."""
    collector_ca: bool = False
    """The policy ConfigMap carries the collector's CA (``constants.COLLECTOR_CA_KEY``):
    mount it and point the sidecar at it. False: the system trust store verifies."""
    collector_audience: str = COLLECTOR_AUDIENCE
    collector_token_seconds: int = 3600
    """Lifetime of the projected token; the kubelet renews it at 80%."""

    def __post_init__(self) -> None:
        if not self.image:
            raise ValueError("sidecar image must not be empty")
        if self.collector_url is not None and not self.collector_url.startswith(
            ("https://", "http://")
        ):
            raise ValueError(f"collector URL {self.collector_url!r} is not http(s)://")
        if not 600 <= self.collector_token_seconds <= 86400:
            raise ValueError("collector token lifetime must be 600-86400 seconds")
        for port in (self.proxy_port, self.admin_port):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} out of range 1-65535")
        if self.proxy_port == self.admin_port:
            raise ValueError(f"proxy and admin port are both {self.proxy_port}")


@dataclass(frozen=True, kw_only=True)
class InjectionPlan(SidecarSettings):
    """Everything ``inject`` needs: the operator-wide settings plus one policy's part."""

    policy_name: str
    policy_hash: str
    configmap: str
    secret_refs: tuple[SecretKeyRef, ...] = ()
    """Secret keys mounted into the sidecar (and only there)."""
    provider_key_refs: tuple[SecretKeyRef, ...] = ()
    """Secret keys app containers must not resolve through their env."""
    override_app_env: bool = False
    """Replace app env vars the user set explicitly (default: keep the user's value)."""

    @classmethod
    def for_policy(cls, policy: PolicyInfo, settings: SidecarSettings) -> InjectionPlan:
        if not policy.is_ready or policy.compiled_hash is None or policy.configmap is None:
            raise ValueError(f"policy {policy.name!r} is not ready")
        base = {f.name: getattr(settings, f.name) for f in dataclasses.fields(SidecarSettings)}
        return cls(
            **base,
            policy_name=policy.name,
            policy_hash=policy.compiled_hash,
            configmap=policy.configmap,
            secret_refs=_unique_refs(policy.secret_refs),
            provider_key_refs=_unique_refs(policy.provider_key_refs),
            override_app_env=policy.override_app_env,
        )

    def app_env(self) -> dict[str, str]:
        """Env set on app containers: base URLs, then placeholder keys."""
        base = f"http://{constants.SIDECAR_PROXY_HOST}:{self.proxy_port}"
        urls = {
            k: base + v.removeprefix(constants.PROXY_BASE) for k, v in constants.APP_ENV.items()
        }
        return {**urls, **constants.APP_PLACEHOLDER_ENV}

    def secret_volumes(self) -> dict[str, list[str]]:
        """Secret name → its keys to mount, both sorted."""
        out: dict[str, list[str]] = {}
        for ref in self.secret_refs:
            keys = out.setdefault(ref.name, [])
            if ref.key not in keys:
                keys.append(ref.key)
        return {name: sorted(keys) for name, keys in sorted(out.items())}


def secret_volume_name(secret_name: str) -> str:
    """``constants.secret_volume_name``, made unique when it would truncate (> 63 chars):
    two long Secret names sharing 48 leading characters must not map to one volume."""
    name = constants.secret_volume_name(secret_name)
    if name == f"{SECRET_VOLUME_PREFIX}{secret_name}":
        return name
    digest = hashlib.sha256(secret_name.encode()).hexdigest()[:10]
    return f"{SECRET_VOLUME_PREFIX}{secret_name[:37].rstrip('-')}-{digest}"


# --------------------------------------------------------------------------------------------
# The status annotation


class EnvRecord(TypedDict):
    name: str
    value: NotRequired[str]
    valueFrom: NotRequired[dict[str, Any]]
    valueOmitted: NotRequired[bool]


class StatusRecord(TypedDict):
    """``aiguard.dev/status``: what injection added, so re-running is a no-op and removal
    (``uninject``) is possible. Canonical JSON (sorted keys, no spaces)."""

    policy: str
    hash: str
    configMap: str
    sidecarVersion: str
    image: str
    initContainers: list[str]
    volumes: list[str]
    env: dict[str, list[str]]
    """Container name → env var names injection added (the user had none of that name)."""
    envReplaced: dict[str, list[EnvRecord]]
    """Container name → the user's entries injection replaced in place, as they were.
    Literal values of API-key variables are not copied into metadata (``valueOmitted``)."""


def read_status(pod: Mapping[str, Any]) -> StatusRecord | None:
    """The pod's status annotation, or None when absent or not a record of ours."""
    raw = _str_map(_map(pod, "metadata"), "annotations").get(constants.ANNOTATION_STATUS)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("policy"), str):
        return None
    record: StatusRecord = {
        "policy": doc["policy"],
        "hash": str(doc.get("hash", "")),
        "configMap": str(doc.get("configMap", "")),
        "sidecarVersion": str(doc.get("sidecarVersion", "")),
        "image": str(doc.get("image", "")),
        "initContainers": [str(n) for n in doc.get("initContainers") or []],
        "volumes": [str(n) for n in doc.get("volumes") or []],
        "env": {str(k): [str(n) for n in v] for k, v in (doc.get("env") or {}).items()},
        "envReplaced": dict(doc.get("envReplaced") or {}),
    }
    return record


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# inject


class InjectionConflict(ValueError):
    """The pod cannot be injected as it is (``injection_required`` reports these first)."""


def _probe(path: str, port: int, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def sidecar_container(plan: InjectionPlan) -> dict[str, Any]:
    """The native sidecar: an init container with ``restartPolicy: Always``."""
    mounts: list[dict[str, Any]] = [
        {"name": POLICY_VOLUME, "mountPath": constants.SIDECAR_POLICY_DIR, "readOnly": True},
        *(
            {
                "name": secret_volume_name(name),
                "mountPath": f"{constants.SIDECAR_SECRETS_DIR}/{name}",
                "readOnly": True,
            }
            for name in plan.secret_volumes()
        ),
        {"name": SPOOL_VOLUME, "mountPath": constants.SIDECAR_SPOOL_DIR},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},  # noqa: S108 (the sidecar's own emptyDir)
    ]
    collector_env: list[dict[str, Any]] = []
    if plan.collector_url:
        mounts.append(
            {
                "name": COLLECTOR_TOKEN_VOLUME,
                "mountPath": str(PurePosixPath(COLLECTOR_TOKEN_FILE).parent),
                "readOnly": True,
            }
        )
        collector_env.append({"name": ENV_COLLECTOR_URL, "value": plan.collector_url})
        if plan.collector_ca:
            ca = f"{constants.SIDECAR_POLICY_DIR}/{constants.COLLECTOR_CA_KEY}"
            collector_env.append({"name": ENV_COLLECTOR_CA_FILE, "value": ca})
    admin = plan.admin_port
    return {
        "name": constants.SIDECAR_CONTAINER_NAME,
        "image": plan.image,
        "imagePullPolicy": plan.image_pull_policy,
        # Native sidecar (Kubernetes >= 1.29): started before the next init containers and
        # the app, kept running, stopped after them; a Job still completes.
        "restartPolicy": "Always",
        "args": [
            "--policy",
            f"{constants.SIDECAR_POLICY_DIR}/{constants.SIDECAR_POLICY_FILE}",
            "--listen",
            f"{constants.SIDECAR_PROXY_HOST}:{plan.proxy_port}",
            "--admin",
            f"0.0.0.0:{admin}",
        ],
        "env": [
            _field_env(ENV_POD_NAME, "metadata.name"),
            _field_env(ENV_POD_NAMESPACE, "metadata.namespace"),
            _field_env(ENV_POD_UID, "metadata.uid"),
            _field_env(ENV_SERVICE_ACCOUNT, "spec.serviceAccountName"),
            {"name": ENV_LOG_LEVEL, "value": plan.log_level},
            *collector_env,
        ],
        "ports": [{"name": ADMIN_PORT_NAME, "containerPort": admin, "protocol": "TCP"}],
        "resources": json_copy(plan.resources),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The next containers start only once this passes: the policy is loaded and the
        # proxy listens, so the app's first LLM call already goes through a ready sidecar.
        "startupProbe": _probe("/readyz", admin, period=1, failures=120),
        "readinessProbe": _probe("/readyz", admin, period=5, failures=3),
        "livenessProbe": _probe("/healthz", admin, period=10, failures=3),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def sidecar_volumes(plan: InjectionPlan) -> list[dict[str, Any]]:
    """Volumes injection adds, all mounted into the sidecar only."""
    items = [{"key": constants.CONFIGMAP_KEY, "path": constants.SIDECAR_POLICY_FILE}]
    if plan.collector_url and plan.collector_ca:
        items.append({"key": constants.COLLECTOR_CA_KEY, "path": constants.COLLECTOR_CA_KEY})
    token: list[dict[str, Any]] = []
    if plan.collector_url:
        # The only credential the sidecar gets: bound to this pod, for the collector's
        # audience alone (the API server refuses it), short-lived and rotated by the kubelet.
        token.append(
            {
                "name": COLLECTOR_TOKEN_VOLUME,
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": plan.collector_audience,
                                "expirationSeconds": plan.collector_token_seconds,
                                "path": PurePosixPath(COLLECTOR_TOKEN_FILE).name,
                            }
                        }
                    ],
                    "defaultMode": FILE_MODE,
                },
            }
        )
    return [
        # Mounted as a directory (no subPath) so ConfigMap updates reach the hot reload.
        {
            "name": POLICY_VOLUME,
            "configMap": {"name": plan.configmap, "items": items, "defaultMode": FILE_MODE},
        },
        # One volume per Secret, limited to the referenced keys; not optional, so a missing
        # Secret keeps the pod from starting rather than running without its key.
        *(
            {
                "name": secret_volume_name(name),
                "secret": {
                    "secretName": name,
                    "items": [{"key": k, "path": k} for k in keys],
                    "defaultMode": FILE_MODE,
                },
            }
            for name, keys in plan.secret_volumes().items()
        ),
        # Survives container restarts, not pod deletion: the sidecar drains it on SIGTERM.
        {"name": SPOOL_VOLUME, "emptyDir": {"sizeLimit": plan.spool_size}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": plan.tmp_size}},
        *token,
    ]


def _secret_key_ref(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    ref = _map(_map(entry, "valueFrom"), "secretKeyRef")
    name, key = ref.get("name"), ref.get("key")
    return (name, key) if isinstance(name, str) and isinstance(key, str) else None


def _record(entry: Mapping[str, Any]) -> EnvRecord:
    rec: EnvRecord = {"name": str(entry.get("name"))}
    if "valueFrom" in entry:
        rec["valueFrom"] = json_copy(entry["valueFrom"])
    elif rec["name"] in constants.APP_PLACEHOLDER_ENV and entry.get("value"):
        rec["valueOmitted"] = True  # a credential is never copied into metadata
    elif "value" in entry:
        rec["value"] = str(entry["value"])
    return rec


def _route_env(container: dict[str, Any], plan: InjectionPlan) -> tuple[list[str], list[EnvRecord]]:
    """Point one container at the sidecar. Returns (names added, entries replaced)."""
    env = [e for e in _list(container, "env") if isinstance(e, dict)]
    protected = {_ref_key(r) for r in plan.provider_key_refs}
    placeholder = constants.PLACEHOLDER_KEY
    replaced: list[EnvRecord] = []

    # 1. No env var of an app container may resolve to a provider key: the key lives in the
    #    sidecar only. The variable keeps its name (the app may read it) with a placeholder.
    #    This holds whatever override_app_env says: it is the product's promise, not a default.
    for i, entry in enumerate(env):
        if _secret_key_ref(entry) in protected:
            replaced.append(_record(entry))
            env[i] = {"name": entry.get("name"), "value": placeholder}

    # 2. Base URLs and placeholder keys, unless the user set that variable explicitly in `env`
    #    (their choice stands, unless the policy says to override it). An explicit base URL is
    #    a choice for that provider: its placeholder key is not added either, as it would
    #    replace a key the app loads with envFrom and break the calls it chose to make.
    present = {n for e in env if isinstance(n := e.get("name"), str)}  # (a pod may be malformed)
    keys_left_alone = {
        key
        for url, key in PROVIDER_KEY_OF_URL.items()
        if url in present and not plan.override_app_env
    }
    added: list[dict[str, Any]] = []
    for name, value in plan.app_env().items():
        if name in keys_left_alone:
            continue
        if name not in present:
            added.append({"name": name, "value": value})
        elif plan.override_app_env:
            for i, entry in enumerate(env):
                if entry.get("name") == name and entry != {"name": name, "value": value}:
                    replaced.append(_record(entry))
                    env[i] = {"name": name, "value": value}

    # 3. `envFrom` cannot be read at admission (no I/O), and `env` beats `envFrom` for the same
    #    name. Values from a ConfigMap/Secret are therefore not "explicit": ours win. A Secret
    #    holding a provider key is shadowed key by key (PREFIX+KEY gets the placeholder); a key
    #    that is no C identifier cannot be shadowed portably and becomes a warning instead
    #    (see secret_exposures).
    by_secret: dict[str, list[str]] = {}
    for name, key in sorted(protected):
        by_secret.setdefault(name, []).append(key)
    taken = present | {e["name"] for e in added}
    for source in _list(container, "envFrom"):
        if not isinstance(source, Mapping):
            continue
        secret = _map(source, "secretRef").get("name")
        prefix = source.get("prefix") or ""
        for key in by_secret.get(secret, []) if isinstance(secret, str) else []:
            var = f"{prefix}{key}"
            if _C_IDENTIFIER.match(var) and var not in taken:
                added.append({"name": var, "value": placeholder})
                taken.add(var)

    if added or replaced:
        # Ours first, so the user's own entries can refer to them: `URL=$(OPENAI_BASE_URL)/x`.
        container["env"] = added + env
    return [e["name"] for e in added], replaced


def inject(pod: Mapping[str, Any], plan: InjectionPlan) -> Pod:
    """A new pod carrying the sidecar per ``plan``; ``pod`` itself is never modified.

    Idempotent: a pod that already has the sidecar comes back as an equal copy, so
    ``inject(inject(p, plan), plan) == inject(p, plan)``. Raises ``InjectionConflict`` when a
    volume name is taken (``injection_required`` reports that as a skip reason first).

    Every init container and container gets the app env: the sidecar is placed first among
    the init containers, so every other one starts after it is ready and can reach it.
    """
    new: Pod = json_copy(pod)
    if has_sidecar(new):
        return new
    spec = new.get("spec")
    if not isinstance(spec, dict):
        spec = new["spec"] = {}
    volumes = list(_list(spec, "volumes"))
    ours = sidecar_volumes(plan)
    names = {str(_name(v)) for v in volumes}
    clashes = sorted(names & {str(v["name"]) for v in ours})
    if clashes:
        raise InjectionConflict(f"volume names already used in the pod: {', '.join(clashes)}")

    env_added: dict[str, list[str]] = {}
    env_replaced: dict[str, list[EnvRecord]] = {}
    for c in _containers(spec):
        added, replaced = _route_env(c, plan)
        if added:
            env_added[str(c.get("name"))] = added
        if replaced:
            env_replaced[str(c.get("name"))] = replaced

    init = [sidecar_container(plan), *_list(spec, "initContainers")]
    if "initContainers" in spec or "containers" not in spec:
        spec["initContainers"] = init
    else:  # new key: placed before `containers`, in start order, for people reading the pod
        items = list(spec.items())
        at = list(spec).index("containers")
        spec.clear()
        spec.update([*items[:at], ("initContainers", init), *items[at:]])
    spec["volumes"] = volumes + ours

    record: StatusRecord = {
        "policy": plan.policy_name,
        "hash": plan.policy_hash,
        "configMap": plan.configmap,
        "sidecarVersion": plan.version,
        "image": plan.image,
        "initContainers": [constants.SIDECAR_CONTAINER_NAME],
        "volumes": [v["name"] for v in ours],
        "env": env_added,
        "envReplaced": env_replaced,
    }
    meta = new.get("metadata")
    if not isinstance(meta, dict):
        meta = new["metadata"] = {}
    annotations = meta.get("annotations")
    if not isinstance(annotations, dict):
        annotations = meta["annotations"] = {}
    annotations[constants.ANNOTATION_STATUS] = _canonical(record)
    return new


def mutator(plan: InjectionPlan) -> Callable[[MutableMapping[str, Any]], None]:
    """``inject`` as an in-place transformation, for kopf's ``patch.fns`` (kopf then diffs
    the body before and after into the admission response's JSON Patch)."""

    def apply(body: MutableMapping[str, Any]) -> None:
        injected = inject(body, plan)
        body.clear()
        body.update(injected)

    return apply


# --------------------------------------------------------------------------------------------
# uninject


def _drop_empty(obj: dict[str, Any], key: str) -> None:
    if obj.get(key) in ([], {}):
        del obj[key]


def uninject(pod: Mapping[str, Any]) -> Pod:
    """A new pod without what ``inject`` added, read from the status annotation.

    Restores replaced env entries; an API-key variable whose literal value was replaced comes
    back absent (its value was never recorded). Lists/maps left empty are removed. A pod
    without a readable status annotation comes back unchanged.
    """
    new: Pod = json_copy(pod)
    record = read_status(new)
    if record is None:
        return new
    spec = new.get("spec")
    if isinstance(spec, dict):
        ours = set(record["initContainers"])
        init = [c for c in _list(spec, "initContainers") if _name(c) not in ours]
        if "initContainers" in spec:
            spec["initContainers"] = init
            _drop_empty(spec, "initContainers")
        vols = set(record["volumes"])
        if "volumes" in spec:
            spec["volumes"] = [v for v in _list(spec, "volumes") if _name(v) not in vols]
            _drop_empty(spec, "volumes")
        for c in _containers(spec):
            cname = str(c.get("name"))
            added = set(record["env"].get(cname, []))
            originals = {r.get("name"): r for r in record["envReplaced"].get(cname, [])}
            if not (added or originals) or not isinstance(c.get("env"), list):
                continue
            env: list[Any] = []
            for entry in c["env"]:
                name = _name(entry)
                if name in added:
                    continue
                if name in originals:
                    rec = originals[name]
                    if rec.get("valueOmitted"):
                        continue
                    entry = {k: json_copy(v) for k, v in rec.items()}
                env.append(entry)
            c["env"] = env
            _drop_empty(c, "env")
    meta = new["metadata"]
    del meta["annotations"][constants.ANNOTATION_STATUS]
    _drop_empty(meta, "annotations")
    return new


def _name(obj: Any) -> Any:
    return obj.get("name") if isinstance(obj, Mapping) else None


# --------------------------------------------------------------------------------------------
# Warnings for what injection cannot fix


def secret_exposures(pod: Mapping[str, Any], plan: InjectionPlan) -> list[str]:
    """Ways an app container can still read a provider key after injection.

    Injection never removes a user's volume (the app may need the other keys of that
    Secret); it says so in the admission response's warnings and in an Event instead.
    """
    protected = {r.name for r in plan.provider_key_refs}
    protected_keys = {_ref_key(r) for r in plan.provider_key_refs}
    if not protected:
        return []
    spec = _map(pod, "spec")
    exposing: dict[str, str] = {}  # volume name → secret name
    for v in _list(spec, "volumes"):
        if not isinstance(v, Mapping) or not isinstance(v.get("name"), str):
            continue
        secret = _map(v, "secret").get("secretName")
        if secret in protected:
            exposing[v["name"]] = secret
        for src in _list(_map(v, "projected"), "sources"):
            s = _map(src, "secret").get("name") if isinstance(src, Mapping) else None
            if s in protected:
                exposing[v["name"]] = s
    out: list[str] = []
    for c in _containers(spec):
        cname = c.get("name")
        if cname == constants.SIDECAR_CONTAINER_NAME:
            continue
        for m in _list(c, "volumeMounts"):
            vol = _name(m)
            if vol in exposing:
                out.append(
                    f"container {cname} mounts Secret {exposing[vol]} (volume {vol}), which "
                    "holds a provider API key: the app can read it; remove the mount"
                )
        for source in _list(c, "envFrom"):
            if not isinstance(source, Mapping):
                continue
            secret = _map(source, "secretRef").get("name")
            prefix = source.get("prefix") or ""
            for name, key in sorted(protected_keys):
                if name == secret and not _C_IDENTIFIER.match(f"{prefix}{key}"):
                    out.append(
                        f"container {cname} loads Secret {name} with envFrom; its key {key!r} "
                        "is not a portable env var name, so injection cannot shadow it; "
                        "remove the envFrom"
                    )
    return out


# --------------------------------------------------------------------------------------------
# decide: the whole admission decision


@dataclass(frozen=True)
class Decision:
    """What the webhook does with one pod: skip (with the reason) or inject (with the plan)."""

    skip: SkipReason | None
    choice: PolicyChoice | None = None
    plan: InjectionPlan | None = None
    pod: Pod | None = None
    """The injected pod (None when skipped)."""
    warnings: tuple[str, ...] = ()
    """For the AdmissionResponse ``warnings`` (shown by kubectl) and a Warning Event."""


def decide(
    pod: Mapping[str, Any],
    *,
    namespace: str | None,
    namespace_labels: Mapping[str, str],
    policies: Iterable[PolicyInfo],
    settings: SidecarSettings,
    operator_namespace: str,
    excluded_namespaces: Iterable[str] = SYSTEM_NAMESPACES,
) -> Decision:
    """``injection_required``, then ``choose_policy``, then ``inject``."""
    reason = injection_required(
        pod,
        namespace_labels,
        operator_namespace=operator_namespace,
        namespace=namespace,
        excluded_namespaces=excluded_namespaces,
        ports=(settings.proxy_port, settings.admin_port),
    )
    if reason is not None:
        return Decision(skip=reason)
    choice = choose_policy(pod, policies)
    if isinstance(choice, SkipReason):
        return Decision(skip=choice)
    plan = InjectionPlan.for_policy(choice.policy, settings)
    return Decision(
        skip=None,
        choice=choice,
        plan=plan,
        pod=inject(pod, plan),
        warnings=tuple(secret_exposures(pod, plan)),
    )


# --------------------------------------------------------------------------------------------
# JSON Patch (RFC 6902)


class JsonPatchOp(TypedDict):
    op: Literal["add", "remove", "replace"]
    path: str
    value: NotRequired[Any]


def json_patch(old: Any, new: Any) -> list[JsonPatchOp]:
    """Operations turning ``old`` into ``new`` (JSON values), for ``patchType: JSONPatch``.

    Objects are diffed key by key; arrays by common prefix and suffix, then element-wise, so
    an element inserted anywhere is one ``add`` (the sidecar at ``initContainers/0``, env
    entries at the front) instead of a rewrite of the array. ``true`` and ``1`` differ.
    Values in the operations are copies.
    """
    ops: list[JsonPatchOp] = []
    _diff(old, new, "", ops)
    return ops


def _token(key: str | int) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values, where (unlike Python's ``==``) ``true != 1``."""
    if a is b:
        return True
    ta, tb = type(a), type(b)
    if ta is dict and tb is dict:  # the common case, without ABC checks
        if len(a) != len(b):
            return False
        return all(key in b and json_equal(value, b[key]) for key, value in a.items())
    if ta is list and tb is list:
        return len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return json_equal(dict(a), dict(b))
    if isinstance(a, Mapping | list) or isinstance(b, Mapping | list):
        return False
    return ta is tb and bool(a == b)  # bool is not int, str is not bytes


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON value (several times faster than ``copy.deepcopy``)."""
    t = type(value)
    if t is dict:
        return {k: json_copy(v) for k, v in value.items()}
    if t is list:
        return [json_copy(v) for v in value]
    if t in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return {k: json_copy(v) for k, v in value.items()}
    return copy.deepcopy(value)


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _diff(old: Any, new: Any, path: str, ops: list[JsonPatchOp]) -> None:
    if json_equal(old, new):
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{_token(key)}"})
        for key, value in new.items():
            sub = f"{path}/{_token(key)}"
            if key in old:
                _diff(old[key], value, sub, ops)
            else:
                ops.append({"op": "add", "path": sub, "value": json_copy(value)})
    elif isinstance(old, list) and isinstance(new, list):
        _diff_list(old, new, path, ops)
    else:
        ops.append({"op": "replace", "path": path, "value": json_copy(new)})


def _diff_list(old: list[Any], new: list[Any], path: str, ops: list[JsonPatchOp]) -> None:
    shortest = min(len(old), len(new))
    start = 0
    while start < shortest and json_equal(old[start], new[start]):
        start += 1
    end = 0  # common suffix length, not overlapping the prefix
    while end < shortest - start and json_equal(old[-1 - end], new[-1 - end]):
        end += 1
    old_mid = old[start : len(old) - end]
    new_mid = new[start : len(new) - end]
    common = min(len(old_mid), len(new_mid))
    for i in range(common):
        _diff(old_mid[i], new_mid[i], f"{path}/{start + i}", ops)
    for i in range(common, len(new_mid)):
        ops.append({"op": "add", "path": f"{path}/{start + i}", "value": json_copy(new_mid[i])})
    for _ in range(common, len(old_mid)):
        ops.append({"op": "remove", "path": f"{path}/{start + common}"})
