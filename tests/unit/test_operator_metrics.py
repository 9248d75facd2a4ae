"""metrics.py: the operator's metrics, in one registry, with the names dashboards use."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from aiguard_operator import admission, metrics


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_every_decision_series_exists_from_the_start() -> None:
    metrics.initialise(admission.metric_series())

    names = {(name, dict(labels).get("reason")) for name, labels in samples()}

    assert ("aiguard_injection_decisions_total", "annotated_policy_missing") in names
    assert ("aiguard_injection_decisions_total", "selector") in names
    assert ("aiguard_injection_decisions_total", "operator_starting") in names


def test_coverage_gauges_follow_the_namespace_s_policies() -> None:
    metrics.set_coverage("m-ns", {"chat": (3, 1), "search": (2, 0)})
    metrics.set_coverage("m-other", {"chat": (1, 1)})

    metrics.set_coverage("m-ns", {"chat": (3, 0)})  # search deleted, chat's gap fixed

    values = samples()
    ns_chat = (("namespace", "m-ns"), ("policy", "chat"))
    assert values[("aiguard_uninjected_pods", ns_chat)] == 0
    assert values[("aiguard_governed_pods", ns_chat)] == 3
    assert ("aiguard_uninjected_pods", (("namespace", "m-ns"), ("policy", "search"))) not in values
    assert values[("aiguard_uninjected_pods", (("namespace", "m-other"), ("policy", "chat")))] == 1

    metrics.set_coverage("m-ns", {})
    metrics.set_coverage("m-other", {})
    assert not any(
        labels and dict(labels).get("namespace", "").startswith("m-") for _, labels in samples()
    )
