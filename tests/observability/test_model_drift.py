"""Model drift (aiguard_sidecar.drift): what counts as a change of the model behind a route,
how memory stays bounded, and how a change becomes a metric, a log line and audit evidence.
Through a real sidecar and collector: test_prometheus.py."""

from __future__ import annotations

import logging

import pytest

from aiguard_api import audit
from aiguard_sidecar.audit import events
from aiguard_sidecar.drift import MAX_FINGERPRINTS, DriftTracker
from aiguard_sidecar.metrics import Metrics
from aiguard_sidecar.records import RequestRecord

# (served model, fingerprint, expected drift kind or None), one response after another on
# the same route, provider and requested model.
SCENARIOS = {
    "stable": [("gpt-4o-0806", "fp_a", None), ("gpt-4o-0806", "fp_a", None)],
    "model_changes_once": [
        ("gpt-4o-0806", "fp_a", None),
        ("gpt-4o-1120", "fp_b", "model"),
        ("gpt-4o-1120", "fp_b", None),
    ],
    "model_changes_back": [
        ("gpt-4o-0806", None, None),
        ("gpt-4o-1120", None, "model"),
        ("gpt-4o-0806", None, "model"),
    ],
    "new_fingerprint_once": [
        ("gpt-4o", "fp_a", None),
        ("gpt-4o", "fp_b", "fingerprint"),
        ("gpt-4o", "fp_b", None),
    ],
    "backends_alternate_between_known_fingerprints": [
        ("gpt-4o", "fp_a", None),
        ("gpt-4o", "fp_b", "fingerprint"),
        ("gpt-4o", "fp_a", None),
        ("gpt-4o", "fp_b", None),
    ],
    "no_fingerprint_is_not_a_change": [
        ("claude-sonnet-4-5", None, None),
        ("claude-sonnet-4-5", "fp_a", None),
        ("claude-sonnet-4-5", None, None),
    ],
    "failed_responses_are_ignored": [("gpt-4o", "fp_a", None), (None, None, None)],
}


@pytest.mark.parametrize("steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_what_counts_as_drift(steps: list[tuple[str | None, str | None, str | None]]) -> None:
    tracker = DriftTracker()
    got = []
    for served, fingerprint, _ in steps:
        drift = tracker.check(
            route="gpt",
            provider="openai",
            requested="gpt-4o",
            served=served,
            fingerprint=fingerprint,
        )
        got.append(drift.kind if drift else None)
    assert got == [kind for *_, kind in steps]


def test_keys_are_separate_and_the_first_response_of_each_is_a_baseline() -> None:
    tracker = DriftTracker()
    keys = [("gpt", "a", "gpt-4o"), ("gpt", "b", "gpt-4o"), ("gpt", "a", "gpt-4o-mini"),
            ("other", "a", "gpt-4o")]  # fmt: skip
    for route, provider, requested in keys:
        drift = tracker.check(
            route=route, provider=provider, requested=requested, served=requested, fingerprint="x"
        )
        assert drift is None


def test_drift_names_what_served_before() -> None:
    tracker = DriftTracker()
    tracker.check(route="r", provider="p", requested="m", served="m-1", fingerprint="fp_1")
    drift = tracker.check(route="r", provider="p", requested="m", served="m-2", fingerprint="fp_2")
    assert drift is not None
    assert drift.evidence() == {"previous_model": "m-1", "previous_fingerprint": "fp_1"}


def test_memory_is_bounded_least_recently_used_first() -> None:
    tracker = DriftTracker(max_keys=3)
    for model in ("a", "b", "c"):
        tracker.check(route="r", provider="p", requested=model, served=model, fingerprint=None)
    tracker.check(route="r", provider="p", requested="a", served="a", fingerprint=None)  # a used
    tracker.check(route="r", provider="p", requested="d", served="d", fingerprint=None)  # b goes
    assert len(tracker) == 3
    # b was forgotten: its next response is a new baseline, not drift; a was kept.
    assert (
        tracker.check(route="r", provider="p", requested="b", served="b2", fingerprint=None) is None
    )
    assert tracker.check(route="r", provider="p", requested="a", served="a2", fingerprint=None)


def test_fingerprints_remembered_per_key_are_bounded() -> None:
    tracker = DriftTracker()
    first = "fp_0"
    tracker.check(route="r", provider="p", requested="m", served="m", fingerprint=first)
    for i in range(1, MAX_FINGERPRINTS + 1):
        tracker.check(route="r", provider="p", requested="m", served="m", fingerprint=f"fp_{i}")
    # fp_0 was pushed out: seeing it again counts as new.
    drift = tracker.check(route="r", provider="p", requested="m", served="m", fingerprint=first)
    assert drift is not None
    assert drift.kind == "fingerprint"


def record(served: str, fingerprint: str) -> RequestRecord:
    return RequestRecord(
        request_id="r1", started_at=1.7e9, started_mono=0.0, policy="team-a/chat",
        policy_hash="sha256:" + "a" * 64, mode="enforce", method="POST",
        path="/openai/v1/chat/completions", operation="chat", route="gpt",
        provider="openai-main", model_requested="gpt-4o", model_served=served,
        system_fingerprint=fingerprint,
    )  # fmt: skip


def test_a_drift_is_counted_logged_and_becomes_audit_evidence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    tracker = DriftTracker(metrics)
    first, second = record("gpt-4o-0806", "fp_a"), record("gpt-4o-1120", "fp_b")
    caplog.set_level(logging.WARNING, logger="aiguard.sidecar.drift")

    first.model_drift = tracker.observe(first)
    second.model_drift = tracker.observe(second)

    assert first.model_drift is None
    assert second.model_drift == {"previous_model": "gpt-4o-0806", "previous_fingerprint": "fp_a"}
    labels = {"aiguard_route": "gpt", "aiguard_provider": "openai-main", "kind": "model"}
    assert metrics.registry.get_sample_value("aiguard_model_drift_total", labels) == 1
    (line,) = [r for r in caplog.records if r.getMessage() == "model drift"]
    fields = getattr(line, "fields", {})
    assert (fields["previous_model"], fields["model_served"]) == ("gpt-4o-0806", "gpt-4o-1120")

    for rec, expected in ((first, None), (second, second.model_drift)):
        drafted = events.draft(rec, cfg=None, key=None)
        assert drafted.attributes[audit.MODEL_DRIFT] == expected
