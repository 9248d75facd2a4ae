"""Pod admission: what the injection webhooks answer, log, count and report. No kopf, no I/O.

Istio's layering: the HTTP layer (kopf's ``WebhookServer``) → this admission layer (one pod in,
an :class:`Outcome` out: the JSON Patch, kubectl warnings, the metric labels, the Event) → the
pure core (``injection.decide``). ``handlers.inject_pod_*`` only gathers the inputs from
kopf's indices and carries the outcome out.

Two webhooks, not one that matches every pod
--------------------------------------------

A webhook that sees every pod costs every pod a round trip, and with ``failurePolicy: Fail``
a stopped operator would block every pod in the cluster. The API server can filter for us, but
one selector cannot express "the pod opted in OR its namespace did": a namespaceSelector and an
objectSelector must both match. So, like Istio's ``namespace.sidecar-injector`` and
``object.sidecar-injector``, there are two webhooks with disjoint namespace selectors:

========================  =========================================  ==========================
webhook                   namespaceSelector                          objectSelector
========================  =========================================  ==========================
``mutate-pods/namespace`` ``aiguard.dev/injection`` In [enabled]     ``aiguard.dev/inject``
                                                                     NotIn [disabled]
``mutate-pods/object``    ``aiguard.dev/injection`` NotIn [enabled]  ``aiguard.dev/inject``
                          (absent, disabled, or a typo)              Exists, NotIn [disabled]
========================  =========================================  ==========================

Both also exclude the system namespaces, the operator's own and the configured ones
(``kubernetes.io/metadata.name`` NotIn [...]), and, for an operator that watches a fixed list
of namespaces, everything else (In [...]). A pod therefore reaches at most one webhook, and
only if it could opt in: an unlabelled pod in an ordinary namespace and a pod labelled
``disabled`` never leave the API server. The objectSelector of the object webhook is
``Exists`` rather than ``In [enabled]`` so a typo (``aiguard.dev/inject: "true"``) reaches the
webhook and gets a Warning Event instead of silence. Everything else (the annotation opt-out,
hostNetwork, the policy choice) is decided by ``injection.decide``, which checks the opt-in
again: the selectors are the fast path, not the rule.

Both are ``persistent`` (kopf leaves them registered when the operator stops), so a stopped
operator means exactly what ``failurePolicy`` says, ``sideEffects: NoneOnDryRun`` (the only
side effect is an Event, never posted for a dry run), and ``reinvocationPolicy: Never``: a
pod that comes back already carries the sidecar and would be skipped anyway. (Persistent
also means: uninstalling a dev-mode operator leaves them registered; delete the
``aiguard.dev`` MutatingWebhookConfiguration with it. The Helm chart ships them statically.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiguard_api import constants
from aiguard_operator import events, injection, metrics

Via = Literal["namespace", "object"]
"""Which of the two webhooks the API server called."""

NAMESPACE_WEBHOOK: Final = "mutate-pods/namespace"
OBJECT_WEBHOOK: Final = "mutate-pods/object"
WEBHOOK_IDS: Final[dict[Via, str]] = {"namespace": NAMESPACE_WEBHOOK, "object": OBJECT_WEBHOOK}

NAMESPACE_NAME_LABEL: Final = injection.NAMESPACE_NAME_LABEL

# Reasons the webhook could not decide: not properties of the pod, so not injection's.
OPERATOR_STARTING: Final = injection.SkipReason(
    "operator_starting",
    "The operator had not yet loaded the policies and namespaces it decides with (it had "
    "just started).",
    warning=True,
)
INTERNAL_ERROR: Final = injection.SkipReason(
    "internal_error",
    "The injection webhook failed on this pod; the operator's log has the error.",
    warning=True,
)
ERROR_REASONS: Final = (OPERATOR_STARTING, INTERNAL_ERROR)

SECRET_EXPOSED: Final = "ProviderSecretExposed"  # noqa: S105 (an Event reason)
"""Event reason when an injected pod still lets an app container read a provider key."""

# --------------------------------------------------------------------------------------------
# The webhook configurations


def _expr(key: str, operator: str, values: Iterable[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values is not None:
        out["values"] = sorted(set(values))
    return out


def namespace_selector(
    excluded: Iterable[str], *, watched: Iterable[str] = (), via: Via | None = None
) -> dict[str, Any]:
    """A namespaceSelector: every namespace but ``excluded``; only ``watched`` if given (exact
    names, no globs); with ``via``, the namespaces that webhook serves (module docstring)."""
    exprs = [_expr(NAMESPACE_NAME_LABEL, "NotIn", excluded)]
    watched = list(watched)
    if watched:
        exprs.append(_expr(NAMESPACE_NAME_LABEL, "In", watched))
    if via == "namespace":
        exprs.append(_expr(constants.LABEL_NS_INJECTION, "In", [constants.INJECT_ENABLED]))
    elif via == "object":
        exprs.append(_expr(constants.LABEL_NS_INJECTION, "NotIn", [constants.INJECT_ENABLED]))
    return {"matchExpressions": exprs}


def object_selector(via: Via) -> dict[str, Any]:
    """The objectSelector of one of the two webhooks (module docstring)."""
    not_disabled = _expr(constants.LABEL_INJECT, "NotIn", [constants.INJECT_DISABLED])
    if via == "namespace":
        return {"matchExpressions": [not_disabled]}
    return {"matchExpressions": [_expr(constants.LABEL_INJECT, "Exists"), not_disabled]}


def pod_webhooks(
    *,
    excluded: Iterable[str],
    watched: Iterable[str] = (),
    failure_policy: Literal["Fail", "Ignore"],
    timeout_seconds: int,
) -> dict[str, dict[str, Any]]:
    """Webhook id → the fields of its entry in the MutatingWebhookConfiguration that differ
    from what kopf builds (kopf knows neither namespaceSelector nor these selectors)."""
    excluded = list(excluded)
    watched = list(watched)
    return {
        WEBHOOK_IDS[via]: {
            "namespaceSelector": namespace_selector(excluded, watched=watched, via=via),
            "objectSelector": object_selector(via),
            "failurePolicy": failure_policy,
            "timeoutSeconds": timeout_seconds,
            "reinvocationPolicy": "Never",
        }
        for via in ("namespace", "object")
    }


def namespace_labels(via: Via, namespace: str, indexed: Mapping[str, str] | None) -> dict[str, str]:
    """The namespace's labels as admission should see them.

    ``indexed`` comes from the operator's watch of namespaces, which can lag the API server
    by a few milliseconds (a namespace labelled just now) or miss a namespace created just
    now. The webhook that was called says what the API server saw: ``namespace`` means the
    namespace has ``aiguard.dev/injection: enabled``; ``object`` means it has not.
    """
    labels = dict(indexed or {})
    labels.setdefault(NAMESPACE_NAME_LABEL, namespace)
    ns_value = labels.get(constants.LABEL_NS_INJECTION)
    if via == "namespace":
        labels[constants.LABEL_NS_INJECTION] = constants.INJECT_ENABLED
    elif ns_value == constants.INJECT_ENABLED:
        del labels[constants.LABEL_NS_INJECTION]  # un-labelled since: the API server knows
    return labels


# --------------------------------------------------------------------------------------------
# One pod


def describe(pod: Mapping[str, Any], namespace: str) -> str:
    """``ns/name``, or ``ns/generateName*`` for a pod the API server has not named yet."""
    meta = pod.get("metadata") or {}
    name = meta.get("name") or f"{meta.get('generateName') or ''}*"
    return f"{namespace}/{name}"


def owner(pod: Mapping[str, Any], namespace: str) -> events.ObjectRef | None:
    """What an Event about the pod's admission should be attached to.

    The controlling owner (ReplicaSet, Job, StatefulSet, ...): the pod does not exist yet
    when admission runs, and a rollout's pods share one owner, so their Events aggregate
    into one. A bare pod gets the Event itself, by name (without a uid: it has none yet).
    A pod with neither an owner nor a name gets none (only the log line and the metric).
    """
    meta = pod.get("metadata") or {}
    refs = [r for r in meta.get("ownerReferences") or [] if isinstance(r, Mapping)]
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ref is not None and ref.get("kind") and ref.get("name") and ref.get("apiVersion"):
        return events.ObjectRef(
            api_version=str(ref["apiVersion"]),
            kind=str(ref["kind"]),
            name=str(ref["name"]),
            namespace=namespace,
            uid=str(ref.get("uid") or "") or None,
        )
    if meta.get("name"):
        return events.ObjectRef("v1", "Pod", str(meta["name"]), namespace)
    return None


@dataclass(frozen=True)
class EventSpec:
    ref: events.ObjectRef
    type: events.EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What the webhook does about one pod, and how it says so."""

    decision: str
    """``metrics.INJECTED``, ``SKIPPED`` or ``ERROR``."""
    reason: str
    """The metric's reason label: a skip reason's code, or how the policy was chosen."""
    skip: injection.SkipReason | None = None
    plan: injection.InjectionPlan | None = None
    patch: Sequence[injection.JsonPatchOp] = ()
    """RFC 6902 operations for the AdmissionResponse (empty: the pod is admitted as it is)."""
    warnings: tuple[str, ...] = field(default=())
    """AdmissionResponse warnings: kubectl prints them to whoever created the pod."""
    allowed: bool = True
    """False: the pod is rejected (an error under ``failurePolicy: Fail``)."""

    @property
    def injected(self) -> bool:
        return self.decision == metrics.INJECTED

    def summary(self) -> str:
        """The log line's text after the pod's name."""
        if self.injected and self.plan is not None:
            text = (
                f"injected (policy {self.plan.policy_name} by {self.reason}, "
                f"{self.plan.policy_hash}, {len(self.patch)} patch operations)"
            )
        elif self.skip is not None:
            if not self.allowed:
                verb = "rejected (failurePolicy Fail)"
            elif self.decision == metrics.ERROR:
                verb = "admitted without the sidecar (failurePolicy Ignore)"
            else:
                verb = "not injected"
            text = f"{verb}: {self.skip.code}: {self.skip.message}"
        else:
            text = self.decision
        return "; ".join([text, *self.warnings]) if self.injected else text

    def event(self, pod: Mapping[str, Any], namespace: str) -> EventSpec | None:
        """The Event for the pod's owner: every skip (Warning when the pod asked for the
        sidecar and runs without it), and an injection that leaves a provider key readable."""
        ref = owner(pod, namespace)
        if ref is None or not self.allowed:  # a rejection is in the creator's own Event
            return None
        who = describe(pod, namespace)
        if self.skip is not None:
            if self.skip.warning:
                message = f"Pod {who} was created without the aiguard sidecar: {self.skip.message}"
            else:
                message = f"Pod {who} is not injected: {self.skip.message}"
            kind: events.EventType = "Warning" if self.skip.warning else "Normal"
            return EventSpec(ref, kind, self.skip.event_reason, message)
        if self.warnings:
            message = f"Pod {who} was injected, but: " + "; ".join(self.warnings)
            return EventSpec(ref, "Warning", SECRET_EXPOSED, message)
        return None


def _skip_warning(reason: injection.SkipReason) -> str:
    return f"aiguard: the pod is created without the sidecar ({reason.code}): {reason.message}"


def review(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    namespace_labels: Mapping[str, str],
    policies: Iterable[injection.PolicyInfo],
    settings: injection.SidecarSettings,
    operator_namespace: str,
    excluded_namespaces: Iterable[str] = injection.SYSTEM_NAMESPACES,
) -> Outcome:
    """Decide about one pod (``injection.decide``) and phrase the answer."""
    decision = injection.decide(
        pod,
        namespace=namespace,
        namespace_labels=namespace_labels,
        policies=policies,
        settings=settings,
        operator_namespace=operator_namespace,
        excluded_namespaces=excluded_namespaces,
    )
    if decision.skip is not None:
        warnings = (_skip_warning(decision.skip),) if decision.skip.warning else ()
        return Outcome(metrics.SKIPPED, decision.skip.code, skip=decision.skip, warnings=warnings)
    if decision.pod is None or decision.choice is None or decision.plan is None:
        raise AssertionError("injection.decide returned neither a skip nor a pod")
    return Outcome(
        metrics.INJECTED,
        decision.choice.by,
        plan=decision.plan,
        patch=injection.json_patch(pod, decision.pod),
        warnings=tuple(f"aiguard: {w}" for w in decision.warnings),
    )


def failed(reason: injection.SkipReason, failure_policy: Literal["Fail", "Ignore"]) -> Outcome:
    """The webhook could not decide (``OPERATOR_STARTING``, ``INTERNAL_ERROR``): the same as
    if it could not be reached, so ``failurePolicy`` says what happens to the pod."""
    if failure_policy == "Fail":
        return Outcome(metrics.ERROR, reason.code, skip=reason, allowed=False)
    return Outcome(metrics.ERROR, reason.code, skip=reason, warnings=(_skip_warning(reason),))


CHOICES: Final = ("annotation", "selector")
"""Values of the metric's reason label for injected pods (``PolicyChoice.by``)."""


def metric_series() -> list[tuple[str, str]]:
    """Every (decision, reason) the webhook can count."""
    return [
        *((metrics.INJECTED, by) for by in CHOICES),
        *((metrics.SKIPPED, r.code) for r in injection.ALL_SKIP_REASONS),
        *((metrics.ERROR, r.code) for r in ERROR_REASONS),
    ]
