"""The series the new metrics produce: guardrail findings with a bounded type label, failure
reasons and event outcomes present at 0 from the start, a policy's readiness until it is
deleted."""

from __future__ import annotations

from aiguard_operator import admission
from aiguard_operator import metrics as operator_metrics
from aiguard_sidecar.metrics import DELIVERY_FAILURE_REASONS, MAX_FINDING_TYPES, OTHER, Metrics


def test_findings_are_counted_by_direction_guardrail_type_and_action() -> None:
    m = Metrics()
    m.count_findings({("input", "pii", "EMAIL_ADDRESS", "redact"): 2})
    m.count_findings({("input", "pii", "EMAIL_ADDRESS", "redact"): 1,
                      ("output", "secrets", "AWS_ACCESS_KEY_ID", "block"): 1})  # fmt: skip
    value = m.registry.get_sample_value
    labels = {"direction": "input", "guardrail": "pii", "type": "EMAIL_ADDRESS", "action": "redact"}
    assert value("aiguard_guardrail_findings_total", labels) == 3
    out = {"direction": "output", "guardrail": "secrets", "type": "AWS_ACCESS_KEY_ID",
           "action": "block"}  # fmt: skip
    assert value("aiguard_guardrail_findings_total", out) == 1


def test_finding_types_beyond_the_cap_fold_into_other() -> None:
    m = Metrics()
    for i in range(MAX_FINDING_TYPES + 5):
        m.count_findings({("input", "deny", f"TYPE_{i}", "block"): 1})
    types = {
        s.labels["type"]
        for family in m.registry.collect()
        if family.name == "aiguard_guardrail_findings"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert len(types) == MAX_FINDING_TYPES + 1
    assert OTHER in types


def test_delivery_failure_reasons_exist_at_zero_before_any_failure() -> None:
    m = Metrics()
    for reason in DELIVERY_FAILURE_REASONS:
        labels = {"reason": reason}
        assert m.registry.get_sample_value("aiguard_audit_delivery_failures_total", labels) == 0


def test_operator_event_outcomes_exist_at_zero_from_the_start() -> None:
    operator_metrics.initialise(admission.metric_series())
    for outcome in operator_metrics.EVENT_OUTCOMES:
        value = operator_metrics.REGISTRY.get_sample_value(
            "aiguard_events_total", {"outcome": outcome}
        )
        assert value is not None


def test_policy_readiness_follows_the_policy_until_it_is_deleted() -> None:
    ready = operator_metrics.REGISTRY.get_sample_value
    labels = {"namespace": "r-ns", "policy": "chat"}
    operator_metrics.set_policy_ready("r-ns", "chat", False)
    assert ready("aiguard_policy_ready", labels) == 0
    operator_metrics.set_policy_ready("r-ns", "chat", True)
    assert ready("aiguard_policy_ready", labels) == 1
    operator_metrics.forget_policy("r-ns", "chat")
    assert ready("aiguard_policy_ready", labels) is None
    operator_metrics.forget_policy("r-ns", "chat")  # again: nothing to remove, no error
