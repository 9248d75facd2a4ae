"""Every Prometheus metric of the operator, declared here and nowhere else.

Served as text on ``GET /metrics`` (``AIGUARD_METRICS``, default ``127.0.0.1:15091``) by
:func:`serve`. Metrics live in their own registry, not the process-wide default one, so an
embedding program or a test can read exactly these.

==========================================  =========  ================================
metric                                      type       labels
==========================================  =========  ================================
``aiguard_injection_decisions_total``       counter    ``decision``, ``reason``
``aiguard_admission_duration_seconds``      histogram  ``webhook``
``aiguard_governed_pods``                   gauge      ``namespace``, ``policy``
``aiguard_uninjected_pods``                 gauge      ``namespace``, ``policy``
``aiguard_events_total``                    counter    ``outcome``
``aiguard_policy_ready``                    gauge      ``namespace``, ``policy``
==========================================  =========  ================================

``decision`` is one of :data:`DECISIONS`; ``reason`` is a skip reason's ``code``
(``injection.Skip``, ``admission.OPERATOR_STARTING`` ...) or, for injected pods, how the
policy was chosen (``annotation`` or ``selector``). Dry-run admissions are not counted: they
create nothing.

Alert on ``aiguard_uninjected_pods > 0``: a pod that asked for the sidecar runs without it,
and on ``aiguard_policy_ready == 0``: an AIPolicy is invalid or its ConfigMap could not be
written (its sidecars keep the last good policy, or have none). ``docs/metrics.md`` is the
reference of every metric.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Label names.
DECISION: Final = "decision"
REASON: Final = "reason"
WEBHOOK: Final = "webhook"
NAMESPACE: Final = "namespace"
POLICY: Final = "policy"
OUTCOME: Final = "outcome"

# Values of the decision label.
INJECTED: Final = "injected"
SKIPPED: Final = "skipped"
ERROR: Final = "error"
"""The webhook could not decide (operator starting, internal error): with failurePolicy
Ignore the pod is admitted unchanged, with Fail it is rejected."""
DECISIONS: Final = (INJECTED, SKIPPED, ERROR)

REGISTRY: Final = CollectorRegistry(auto_describe=True)

INJECTION_DECISIONS: Final = Counter(
    "aiguard_injection_decisions",
    "Pod admissions by the injection webhook, by decision and reason.",
    [DECISION, REASON],
    registry=REGISTRY,
)
ADMISSION_DURATION: Final = Histogram(
    "aiguard_admission_duration_seconds",
    "Time the operator spent on one pod admission request, from kopf's call to the answer.",
    [WEBHOOK],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
GOVERNED_PODS: Final = Gauge(
    "aiguard_governed_pods",
    "Running pods that asked for the sidecar and that the policy governs.",
    [NAMESPACE, POLICY],
    registry=REGISTRY,
)
UNINJECTED_PODS: Final = Gauge(
    "aiguard_uninjected_pods",
    "Running pods the policy governs that run without the sidecar (coverage gaps).",
    [NAMESPACE, POLICY],
    registry=REGISTRY,
)
EVENTS: Final = Counter(
    "aiguard_events",
    "Kubernetes Events of the operator's own recorder: created, updated (aggregated "
    "repeats), failed to write, or dropped (too many distinct events pending).",
    [OUTCOME],
    registry=REGISTRY,
)


POLICY_READY: Final = Gauge(
    "aiguard_policy_ready",
    "1 when the AIPolicy compiled into its ConfigMap (condition Ready=True), 0 when it is "
    "invalid or the ConfigMap could not be written.",
    [NAMESPACE, POLICY],
    registry=REGISTRY,
)


EVENT_OUTCOMES: Final = ("created", "updated", "failed", "dropped")
"""Values of ``aiguard_events_total{outcome}`` (``events.py``)."""


def initialise(decisions: Iterable[tuple[str, str]]) -> None:
    """Create these (decision, reason) series, and every event outcome's, at 0, so rates and
    alerts work from the start."""
    for decision, reason in decisions:
        INJECTION_DECISIONS.labels(decision, reason)
    for outcome in EVENT_OUTCOMES:
        EVENTS.labels(outcome)


def set_coverage(namespace: str, counts: dict[str, tuple[int, int]]) -> None:
    """Set the coverage gauges of ``namespace``: policy → (governed, uninjected).

    Series of that namespace's policies missing from ``counts`` (deleted) are removed.
    """
    for gauge in (GOVERNED_PODS, UNINJECTED_PODS):
        for labels in _series(gauge):
            if labels[NAMESPACE] == namespace and labels[POLICY] not in counts:
                gauge.remove(namespace, labels[POLICY])
    for policy, (governed, uninjected) in counts.items():
        GOVERNED_PODS.labels(namespace, policy).set(governed)
        UNINJECTED_PODS.labels(namespace, policy).set(uninjected)


def set_policy_ready(namespace: str, policy: str, ready: bool) -> None:
    POLICY_READY.labels(namespace, policy).set(1 if ready else 0)


def forget_policy(namespace: str, policy: str) -> None:
    """Remove a deleted policy's ``aiguard_policy_ready`` series."""
    for labels in _series(POLICY_READY):
        if labels[NAMESPACE] == namespace and labels[POLICY] == policy:
            POLICY_READY.remove(namespace, policy)


def _series(gauge: Gauge) -> list[dict[str, str]]:
    return [
        dict(sample.labels)
        for metric in gauge.collect()
        for sample in metric.samples
        if sample.labels
    ]


def exposition() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(host: str, port: int) -> web.AppRunner:
    """Start serving ``/metrics`` on ``host:port``; ``await runner.cleanup()`` stops it."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
