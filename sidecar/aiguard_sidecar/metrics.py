"""Every metric the sidecar exports, declared in this one module.

Names follow the OpenTelemetry GenAI semantic conventions where one exists (dots become
underscores, the unit becomes a suffix), and ``aiguard_*`` otherwise. Counters end in
``_total``, durations in ``_seconds``. Label names are the constants below.

Cardinality is bounded: provider names come from the policy, reasons and kinds from fixed
vocabularies, and model names (which clients choose) pass through :class:`LabelCap`, which
keeps the first :data:`MAX_MODEL_LABELS` distinct values and folds the rest into ``_other``
(guardrail finding types likewise, capped at :data:`MAX_FINDING_TYPES`; routes come from the
policy). No user, group or request id, and no raw request path, is ever a label.

The reference of every metric, with its labels and meaning, is ``docs/metrics.md`` (a test
fails when it and these declarations disagree).

Each :class:`Metrics` has its own ``CollectorRegistry`` (served on the admin port), so tests can
run several sidecars in one process.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from aiguard_api.policy_types import ProviderType
from aiguard_sidecar.routing import BreakerState

# Label names (OpenTelemetry attribute names with dots as underscores).
OPERATION: Final = "gen_ai_operation_name"
PROVIDER_NAME: Final = "gen_ai_provider_name"  # the well-known provider (openai, anthropic, ...)
REQUEST_MODEL: Final = "gen_ai_request_model"
RESPONSE_MODEL: Final = "gen_ai_response_model"
TOKEN_TYPE: Final = "gen_ai_token_type"  # noqa: S105 - a label name: input | output
ERROR_TYPE: Final = "error_type"  # "" on success
PROVIDER: Final = "aiguard_provider"  # the provider's name in the policy
ROUTE: Final = "aiguard_route"
DECISION: Final = "decision"
REASON: Final = "reason"
CAUSE: Final = "cause"
KIND: Final = "kind"
POLICY: Final = "policy"
HASH: Final = "hash"
RESULT: Final = "result"
DIRECTION: Final = "direction"  # input | output
GUARDRAIL: Final = "guardrail"
FINDING_TYPE: Final = "type"
ACTION: Final = "action"

MAX_MODEL_LABELS: Final = 64
MAX_FINDING_TYPES: Final = 128
MAX_CACHED_CHILDREN: Final = 4096
OTHER: Final = "_other"

# OpenTelemetry's well-known gen_ai.provider.name values.
OTEL_PROVIDER: Final[dict[ProviderType, str]] = {
    ProviderType.OPENAI: "openai",
    ProviderType.AZURE_OPENAI: "azure.ai.openai",
    ProviderType.ANTHROPIC: "anthropic",
    ProviderType.OPENAI_COMPATIBLE: "openai_compatible",
}

# Bucket boundaries advised by the OpenTelemetry GenAI conventions.
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
TTFT_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
# Every ``reason`` of ``aiguard_audit_delivery_failures_total`` (``audit/shipper.py``): the
# series exist at 0 from the start, so rates and alerts see the first failure.
DELIVERY_FAILURE_REASONS: Final = (
    "connect", "tls", "timeout", "http_4xx", "http_5xx", "unauthorized", "forbidden",
    "bad_ack", "token", "spool_read",
)  # fmt: skip
# ``kind`` of ``aiguard_model_drift_total`` (``drift.py``).
DRIFT_KINDS: Final = ("model", "fingerprint")

OVERHEAD_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip


class LabelCap:
    """Keeps at most ``limit`` distinct label values; later newcomers become ``_other``."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int = MAX_MODEL_LABELS) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return ""
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.model_label = LabelCap()
        self.finding_type_label = LabelCap(MAX_FINDING_TYPES)

        # OpenTelemetry GenAI client metrics.
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of GenAI operations through the sidecar, from request to last byte.",
            [OPERATION, PROVIDER_NAME, PROVIDER, REQUEST_MODEL, RESPONSE_MODEL, ERROR_TYPE],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per operation, as reported by the provider.",
            [OPERATION, PROVIDER_NAME, PROVIDER, REQUEST_MODEL, RESPONSE_MODEL, TOKEN_TYPE],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request to the first output token of a streamed response.",
            [OPERATION, PROVIDER_NAME, PROVIDER, REQUEST_MODEL],
            buckets=TTFT_BUCKETS,
            registry=r,
        )

        # The sidecar's own.
        self.requests = Counter(
            "aiguard_requests_total",
            "Requests by decision (allow, deny, shadow_deny in audit mode, error) and reason.",
            [DECISION, REASON],
            registry=r,
        )
        self.inflight = Gauge(
            "aiguard_inflight_requests", "Requests being served right now.", registry=r
        )
        self.overhead = Histogram(
            "aiguard_proxy_overhead_seconds",
            "Time a request spent in the sidecar itself (latency minus upstream time).",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            "aiguard_failovers_total",
            "Requests moved from one provider to the next, by route, provider left and cause.",
            [ROUTE, PROVIDER, CAUSE],
            registry=r,
        )
        self.breaker_state = Gauge(
            "aiguard_breaker_state",
            "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open.",
            [PROVIDER],
            registry=r,
        )
        self.upstream_errors = Counter(
            "aiguard_upstream_errors_total",
            "Failed upstream attempts by provider and kind (connect, timeout, 5xx, 429, "
            "stream, no_key, tls).",
            [PROVIDER, KIND],
            registry=r,
        )
        self.policy_reloads = Counter(
            "aiguard_policy_reloads_total", "Policy file changes applied.", registry=r
        )
        self.policy_reload_failures = Counter(
            "aiguard_policy_reload_failures_total",
            "Policy file changes rejected (the last good policy stays in force).",
            registry=r,
        )
        self.policy_info = Gauge(
            "aiguard_policy_info",
            "The policy in force (value 1), by namespace/name and content hash.",
            [POLICY, HASH],
            registry=r,
        )
        self.secret_reloads = Counter(
            "aiguard_secret_reloads_total",
            "Mounted secret files (provider keys, CA bundles) read after a change, by result.",
            [RESULT],
            registry=r,
        )
        self.guardrail_findings = Counter(
            "aiguard_guardrail_findings_total",
            "Guardrail findings by direction (input, output), guardrail (pii, secrets, "
            "prompt_injection, moderation, ...), finding type (EMAIL_ADDRESS, jailbreak, ...) "
            "and the action that applied (redact, block, flag, ...). Counts, never content.",
            [DIRECTION, GUARDRAIL, FINDING_TYPE, ACTION],
            registry=r,
        )
        self.model_drift = Counter(
            "aiguard_model_drift_total",
            "Responses whose served model or system fingerprint changed for the same route, "
            "provider and requested model (kind: model, fingerprint). See drift.py.",
            [ROUTE, PROVIDER, KIND],
            registry=r,
        )
        self.unscanned_parts = Counter(
            "aiguard_unscanned_content_parts_total",
            "Content parts no guardrail could read (image, audio, file, tokens, unknown; "
            "unparseable_response: a provider response the output guardrails could not read).",
            [KIND],
            registry=r,
        )

        # Audit delivery (``audit/``). The gauges are computed at scrape time from the spool
        # (``Gauge.set_function``), so they are current even while delivery is stuck.
        self.audit_events = Counter(
            "aiguard_audit_events_total",
            "Audit events written (spooled durably, or copied to stdout without a collector).",
            registry=r,
        )
        self.audit_spool_depth = Gauge(
            "aiguard_audit_spool_depth",
            "Audit events in the spool not yet acknowledged by the collector.",
            registry=r,
        )
        self.audit_spool_bytes = Gauge(
            "aiguard_audit_spool_bytes", "Bytes of audit spool segments on disk.", registry=r
        )
        self.audit_delivery_lag = Gauge(
            "aiguard_audit_delivery_lag_seconds",
            "Age of the oldest audit event not yet acknowledged by the collector (0: none).",
            registry=r,
        )
        self.audit_delivery_failures = Counter(
            "aiguard_audit_delivery_failures_total",
            "Failed attempts to deliver a batch to the collector, by reason (connect, tls, "
            "timeout, http_4xx, http_5xx, unauthorized, forbidden, bad_ack, token, spool_read).",
            [REASON],
            registry=r,
        )
        self.audit_events_dropped = Counter(
            "aiguard_audit_events_dropped_total",
            "Decided requests whose audit event was lost (served under onSpoolFailure open, "
            "or spool content abandoned). Must stay 0.",
            registry=r,
        )
        self.audit_otlp_exported = Counter(
            "aiguard_audit_otlp_exported_total",
            "Audit events delivered to the OTLP endpoint (audit.sinks.otlpEndpoint); a copy.",
            registry=r,
        )
        self.audit_otlp_dropped = Counter(
            "aiguard_audit_otlp_dropped_total",
            "Audit events the OTLP copy gave up on (queue full, refused, shutdown); the "
            "collector path is unaffected.",
            registry=r,
        )
        self.audit_spool_write_failures = Counter(
            "aiguard_audit_spool_write_failures_total",
            "Audit events that could not be written to the spool (disk full, I/O error).",
            registry=r,
        )
        for reason in DELIVERY_FAILURE_REASONS:
            self.audit_delivery_failures.labels(reason)
        self._policy_labels: tuple[str, str] | None = None
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, memoised: the per-request metrics skip prometheus-client's
        label validation and locking after the first request of each label set. The cache is
        bounded by the label caps (it is reset if it ever grows past them)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= MAX_CACHED_CHILDREN:
                self._children.clear()
            found = self._children[key] = metric.labels(*values)
        return found

    def count_findings(self, findings: dict[tuple[str, str, str, str], int]) -> None:
        """Count a request's guardrail findings: (direction, guardrail, type, action) → n."""
        for (direction, guardrail, kind, action), n in findings.items():
            labels = (direction, guardrail, self.finding_type_label(kind), action)
            self.child(self.guardrail_findings, *labels).inc(n)

    def set_breaker(self, provider: str, state: BreakerState) -> None:
        self.breaker_state.labels(provider).set(int(state))

    def forget_provider(self, provider: str) -> None:
        with contextlib.suppress(KeyError):
            self.breaker_state.remove(provider)

    def set_policy(self, name: str, content_hash: str) -> None:
        if self._policy_labels is not None:
            with contextlib.suppress(KeyError):
                self.policy_info.remove(*self._policy_labels)
        self._policy_labels = (name, content_hash)
        self.policy_info.labels(name, content_hash).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
