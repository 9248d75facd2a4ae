"""Coverage: which pods should carry the sidecar and do not. Pure: pods and policies in, a
report out; the operator lists (or indexes) the pods, writes ``status.coverage``, emits Events
and sets the metric.

A pod is *governed* by a policy when it asked for the sidecar (pod or namespace opt-in, no
opt-out, not in an excluded namespace) and the policy applies to it: the pod's
``aiguard.dev/policy`` annotation names it, or (without the annotation) its selector matches.
A governed pod is *injected* when it carries the sidecar container; it then counts under the
policy its status annotation records (what it actually runs), not under every selector that
matches it today. Every other governed pod is a gap, with the reason it has no sidecar:

- ``sidecar_missing``: injection would succeed now; the pod was admitted without it (webhook
  unavailable with ``failurePolicy: Ignore``, or created before the webhook or the policy).
  Recreating the pod fixes it.
- a ``SkipReason`` of ``injection`` (``policy_ambiguous``, ``policy_not_ready``,
  ``host_network``, ...): the webhook would skip it again; the reason says what to change.
  An ambiguous pod counts under each policy that selects it, so each one's owner sees it.

An opted-in pod that no policy governs (``no_policy_matched``, ``annotated_policy_missing``)
is a gap too; it is in ``CoverageReport.gaps`` but under no policy.
Pods that finished (``Succeeded``/``Failed``) or are being deleted are not counted: they run
nothing that could call an LLM.

Three entry points::

    assess(pods, policies, *, namespace, namespace_labels, operator_namespace) -> CoverageReport
        pods as dicts (a LIST of the namespace's pods), policies as injection.PolicyInfo
    report(facts, selectors, *, namespace_labels=...)                        -> CoverageReport
        pods as PodFacts (small records kept in a kopf index), policies as PolicySelector;
        Memo().report(...) the same, recounting only the pods that changed since its last call
    count(facts, selectors, *, namespace_labels=...)                         -> {policy: Coverage}
        the same, only the per-policy counts
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiguard_api import constants
from aiguard_api.policy import Coverage as CoverageStatus
from aiguard_api.policy import LabelSelector
from aiguard_operator import injection

SIDECAR_MISSING: Final = injection.SkipReason(
    "sidecar_missing",
    "The pod opted in and a ready policy selects it, but it runs without the sidecar (admitted "
    "while the webhook was unavailable, or before the webhook or the policy existed); "
    "recreate it.",
    warning=True,
)

MAX_NAMES: Final = 100
"""Cap on ``status.coverage.uninjectedPods``: one object's status must stay small. The number
of uninjected pods is always exact: ``governedPods - injectedPods``."""

State = Literal["injected", "uninjected"]


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Coverage:
    """One policy's coverage; ``as_status()`` is its ``status.coverage``."""

    governed_pods: int
    injected_pods: int
    uninjected: tuple[str, ...] = ()
    """Names of governed pods without the sidecar, sorted (all of them)."""

    def as_status(self, *, max_names: int = MAX_NAMES) -> dict[str, Any]:
        """Wire form (camelCase), as ``AIPolicyStatus.coverage`` defines it."""
        return CoverageStatus(
            governed_pods=self.governed_pods,
            injected_pods=self.injected_pods,
            uninjected_pods=list(self.uninjected[:max_names]),
        ).model_dump(mode="json", by_alias=True)


@dataclass(frozen=True)
class PodCoverage:
    """One governed (or opted-in but ungoverned) pod."""

    pod: str
    state: State
    policies: tuple[str, ...]
    """Policies the pod counts under (several only for an ambiguous selector match)."""
    reason: injection.SkipReason | None = None
    """Why an uninjected pod has no sidecar; None for injected pods."""


@dataclass(frozen=True)
class CoverageReport:
    policies: tuple[str, ...]
    """Every policy given, also those governing no pod (their coverage is all zeros)."""
    pods: tuple[PodCoverage, ...]

    @property
    def gaps(self) -> tuple[PodCoverage, ...]:
        """Pods that should carry the sidecar and do not."""
        return tuple(p for p in self.pods if p.state == "uninjected")

    def for_policy(self, name: str) -> Coverage:
        mine = [p for p in self.pods if name in p.policies]
        return Coverage(
            governed_pods=len(mine),
            injected_pods=sum(p.state == "injected" for p in mine),
            uninjected=tuple(sorted(p.pod for p in mine if p.state == "uninjected")),
        )

    def by_policy(self) -> dict[str, Coverage]:
        return {name: self.for_policy(name) for name in self.policies}

    def gap_counts(self) -> dict[tuple[str, str], int]:
        """(policy, reason code) → uninjected pods: the samples of the coverage metric.
        A gap under no policy has policy ``""``."""
        counts: dict[tuple[str, str], int] = {}
        for p in self.gaps:
            code = (p.reason or SIDECAR_MISSING).code
            for policy in p.policies or ("",):
                counts[(policy, code)] = counts.get((policy, code), 0) + 1
        return counts


# --------------------------------------------------------------------------------------------
# assess: pods as dicts


def _is_running(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return not meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def _applicable(pod: Mapping[str, Any], policies: Sequence[injection.PolicyInfo]) -> list[str]:
    """Names of the policies that apply to the pod (annotation, else selectors), readiness
    and ambiguity aside."""
    meta = pod.get("metadata") or {}
    wanted = str((meta.get("annotations") or {}).get(constants.ANNOTATION_POLICY, "")).strip()
    if wanted:
        return [p.name for p in policies if p.name == wanted]
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if isinstance(v, str)}
    return [p.name for p in policies if p.selector.matches(labels)]


def assess(
    pods: Iterable[Mapping[str, Any]],
    policies: Iterable[injection.PolicyInfo],
    *,
    namespace: str,
    namespace_labels: Mapping[str, str],
    operator_namespace: str,
    excluded_namespaces: Iterable[str] = injection.SYSTEM_NAMESPACES,
) -> CoverageReport:
    """Coverage of the pods of one namespace by that namespace's policies.

    Uses the webhook's own rules (``injection.injection_required``, ``choose_policy``), so
    coverage and admission can never disagree about who should have the sidecar.
    """
    policy_list = list(policies)
    excluded = frozenset(excluded_namespaces)
    out: list[PodCoverage] = []
    for pod in pods:
        found = _assess_pod(
            pod,
            policy_list,
            namespace=namespace,
            namespace_labels=namespace_labels,
            operator_namespace=operator_namespace,
            excluded_namespaces=excluded,
        )
        if found is not None:
            out.append(found)
    return CoverageReport(
        policies=tuple(p.name for p in policy_list),
        pods=tuple(sorted(out, key=lambda p: p.pod)),
    )


def _assess_pod(
    pod: Mapping[str, Any],
    policy_list: Sequence[injection.PolicyInfo],
    *,
    namespace: str,
    namespace_labels: Mapping[str, str],
    operator_namespace: str,
    excluded_namespaces: frozenset[str],
) -> PodCoverage | None:
    """One pod's coverage; None when it does not count (finished, or never asked)."""
    if not _is_running(pod):
        return None
    name = str((pod.get("metadata") or {}).get("name", ""))
    if injection.has_sidecar(pod):
        status = injection.read_status(pod)
        running = [status["policy"]] if status else _applicable(pod, policy_list)[:1]
        return PodCoverage(name, "injected", tuple(running))
    reason = injection.injection_required(
        pod,
        namespace_labels,
        operator_namespace=operator_namespace,
        namespace=namespace,
        excluded_namespaces=excluded_namespaces,
    )
    if reason is not None and not reason.warning:
        return None  # never asked for the sidecar: not opted in, opted out, excluded
    if reason is None:
        choice = injection.choose_policy(pod, policy_list)
        reason = choice if isinstance(choice, injection.SkipReason) else SIDECAR_MISSING
    return PodCoverage(name, "uninjected", tuple(_applicable(pod, policy_list)), reason)


# --------------------------------------------------------------------------------------------
# count: pods as small records, for a kopf index over every pod of the cluster

_KEPT_ANNOTATIONS: Final = frozenset(
    {constants.ANNOTATION_INJECT, constants.ANNOTATION_POLICY, injection.MIRROR_ANNOTATION}
)


@dataclass(frozen=True)
class PodFacts:
    """What coverage needs to know of a pod: a few hundred bytes instead of the whole pod.

    Build it with ``PodFacts.from_pod(pod)`` so every fact the webhook's rules read is kept;
    the four positional fields alone give the opt-in/policy view without the technical
    reasons (hostNetwork, Windows, name and port conflicts).
    """

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    """Only the annotations the rules read (inject, policy, mirror)."""
    containers: Sequence[str]
    """Names of init containers and containers."""
    injected_policy: str | None = None
    """The policy recorded in the pod's ``aiguard.dev/status``."""
    running: bool = True
    """False once the pod finished or is being deleted."""
    spec: Mapping[str, Any] = field(default_factory=dict)
    """The spec fields the rules read: hostNetwork, os, volume names, container ports."""

    @property
    def injected(self) -> bool:
        return constants.SIDECAR_CONTAINER_NAME in self.containers

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodFacts:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        annotations = meta.get("annotations") or {}
        status = injection.read_status(pod)
        containers = [c for key in ("initContainers", "containers") for c in spec.get(key) or []]
        kept_spec: dict[str, Any] = {
            "containers": [
                {"name": c.get("name"), "ports": c["ports"]} if c.get("ports") else {}
                for c in containers
            ],
            "volumes": [{"name": v.get("name")} for v in spec.get("volumes") or []],
        }
        for key in ("hostNetwork", "os"):
            if key in spec:
                kept_spec[key] = spec[key]
        return cls(
            name=str(meta.get("name", "")),
            labels={k: v for k, v in (meta.get("labels") or {}).items() if isinstance(v, str)},
            annotations={k: v for k, v in annotations.items() if k in _KEPT_ANNOTATIONS},
            containers=tuple(str(c.get("name", "")) for c in containers),
            injected_policy=status["policy"] if status else None,
            running=_is_running(pod),
            spec=kept_spec,
        )

    def as_pod(self) -> dict[str, Any]:
        """A minimal pod the webhook's rules can read."""
        annotations = dict(self.annotations)
        if self.injected_policy is not None:
            annotations[constants.ANNOTATION_STATUS] = json.dumps({"policy": self.injected_policy})
        spec = {k: v for k, v in self.spec.items() if k != "containers"}
        ports = [c for c in self.spec.get("containers") or [] if c]
        spec["containers"] = [{"name": n} for n in self.containers] + ports
        return {
            "metadata": {
                "name": self.name,
                "labels": dict(self.labels),
                "annotations": annotations,
            },
            "spec": spec,
            "status": {} if self.running else {"phase": "Succeeded"},
        }


@dataclass(frozen=True)
class PolicySelector:
    """A policy as ``count`` sees it."""

    name: str
    selector: LabelSelector
    ready: bool = True
    """False while the policy has no compiled config; its gaps then say policy_not_ready."""

    def info(self) -> injection.PolicyInfo:
        return injection.PolicyInfo(
            name=self.name,
            selector=self.selector,
            ready=self.ready,
            compiled_hash="sha256:unknown" if self.ready else None,
            configmap=constants.configmap_name(self.name),
        )


def governing_policy(pod: PodFacts, policies: Iterable[PolicySelector]) -> str | None:
    """The policy that governs the pod, or None (none applies, or several do)."""
    # Which policy governs does not depend on readiness: take them all as ready.
    ready = [PolicySelector(p.name, p.selector).info() for p in policies]
    choice = injection.choose_policy(pod.as_pod(), ready)
    return None if isinstance(choice, injection.SkipReason) else choice.policy.name


def report(
    pods: Iterable[PodFacts],
    policies: Sequence[PolicySelector],
    *,
    namespace: str = "",
    namespace_labels: Mapping[str, str] | None = None,
    operator_namespace: str = "",
    excluded_namespaces: Iterable[str] = injection.SYSTEM_NAMESPACES,
) -> CoverageReport:
    """``assess`` for pods as ``PodFacts`` and policies as ``PolicySelector``: per policy
    counts (``by_policy``) and every gap with its reason (``gaps``).

    Pass ``namespace_labels``: without them only pods opted in by their own label count
    (a namespace-level opt-in is invisible).
    """
    return assess(
        (p.as_pod() for p in pods),
        [p.info() for p in policies],
        namespace=namespace,
        namespace_labels=namespace_labels or {},
        operator_namespace=operator_namespace,
        excluded_namespaces=excluded_namespaces,
    )


class Memo:
    """``report`` for one namespace, again and again, at the cost of the pods that changed.

    A kopf index keeps a pod's ``PodFacts`` object until the pod changes (it replaces only
    values that differ), so a pod whose facts are the *same object* as at the last count has
    the same result, as long as the policies, the namespace's labels and the settings are
    equal too (otherwise everything is counted afresh). A rollout's recount is then O(new
    pods) instead of O(pods): 600 pods cost 70 ms counted afresh, on the event loop that
    also answers admission requests.
    """

    def __init__(self) -> None:
        self._context: tuple[Any, ...] | None = None
        self._pods: dict[int, tuple[PodFacts, PodCoverage | None]] = {}

    def report(
        self,
        pods: Iterable[PodFacts],
        policies: Sequence[PolicySelector],
        *,
        namespace: str = "",
        namespace_labels: Mapping[str, str] | None = None,
        operator_namespace: str = "",
        excluded_namespaces: Iterable[str] = injection.SYSTEM_NAMESPACES,
    ) -> CoverageReport:
        """The same as :func:`report`."""
        labels = dict(namespace_labels or {})
        excluded = frozenset(excluded_namespaces)
        context = (list(policies), labels, namespace, operator_namespace, excluded)
        if context != self._context:
            self._context, self._pods = context, {}
        infos = [p.info() for p in policies]
        kept: dict[int, tuple[PodFacts, PodCoverage | None]] = {}
        out: list[PodCoverage] = []
        for facts in pods:
            hit = self._pods.get(id(facts))
            if hit is not None and hit[0] is facts:
                found = hit[1]
            else:
                found = _assess_pod(
                    facts.as_pod(),
                    infos,
                    namespace=namespace,
                    namespace_labels=labels,
                    operator_namespace=operator_namespace,
                    excluded_namespaces=excluded,
                )
            kept[id(facts)] = (facts, found)  # holding `facts` keeps its id from being reused
            if found is not None:
                out.append(found)
        self._pods = kept
        return CoverageReport(
            policies=tuple(p.name for p in policies),
            pods=tuple(sorted(out, key=lambda p: p.pod)),
        )


def count(
    pods: Iterable[PodFacts],
    policies: Sequence[PolicySelector],
    *,
    namespace: str = "",
    namespace_labels: Mapping[str, str] | None = None,
    operator_namespace: str = "",
    excluded_namespaces: Iterable[str] = injection.SYSTEM_NAMESPACES,
) -> dict[str, Coverage]:
    """Coverage per policy (every policy given has an entry); see ``report``."""
    return report(
        pods,
        policies,
        namespace=namespace,
        namespace_labels=namespace_labels,
        operator_namespace=operator_namespace,
        excluded_namespaces=excluded_namespaces,
    ).by_policy()
