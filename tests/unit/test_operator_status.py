"""status.py: conditions follow the Kubernetes conventions, lastTransitionTime only moves when
the status does."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiguard_operator import status

T1 = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
T2 = T1 + dt.timedelta(minutes=5)


def ready_conditions(
    now: dt.datetime, current: list[dict[str, Any]] | None = None
) -> list[status.Condition]:
    return status.merge(
        current,
        status.ready(config_map="aiguard-policy-p", compiled_hash="sha256:abc"),
        generation=1,
        now=now,
    )


def test_first_reconcile_sets_ready_invalid_and_overlap_with_the_time_and_generation() -> None:
    conds = ready_conditions(T1)

    assert [(c["type"], c["status"], c["reason"]) for c in conds] == [
        ("Ready", "True", "Compiled"),
        ("Invalid", "False", "Valid"),
        ("SelectorOverlap", "False", "NoOverlap"),
    ]
    assert {c["lastTransitionTime"] for c in conds} == {"2026-03-01T12:00:00Z"}
    assert {c["observedGeneration"] for c in conds} == {1}
    assert conds[0]["message"] == "compiled into ConfigMap aiguard-policy-p (sha256:abc)"


def test_same_status_keeps_the_transition_time_even_when_reason_and_message_change() -> None:
    first = ready_conditions(T1)
    wanted = [status.Wanted("Ready", "True", "Recompiled", "new message")]

    second = status.merge(first, wanted, generation=2, now=T2)

    ready = status.find(second, "Ready")
    assert ready is not None
    assert ready["lastTransitionTime"] == "2026-03-01T12:00:00Z"
    assert ready["reason"] == "Recompiled"
    assert ready["message"] == "new message"
    assert ready["observedGeneration"] == 2


def test_status_change_moves_the_transition_time() -> None:
    first = ready_conditions(T1)

    second = status.merge(
        first,
        status.invalid(
            reason=status.REASON_SECRET_NOT_FOUND,
            message="Secret x not found",
            kept_config_map="aiguard-policy-p",
        ),
        generation=2,
        now=T2,
    )

    ready, invalid = status.find(second, "Ready"), status.find(second, "Invalid")
    assert ready is not None
    assert invalid is not None
    assert ready["status"] == "False"
    assert invalid["status"] == "True"
    assert ready["lastTransitionTime"] == invalid["lastTransitionTime"] == "2026-03-01T12:05:00Z"
    assert ready["message"] == (
        "Secret x not found The last valid config stays in ConfigMap aiguard-policy-p."
    )
    assert invalid["message"] == "Secret x not found"
    overlap = status.find(second, "SelectorOverlap")
    assert overlap is not None
    assert overlap["lastTransitionTime"] == "2026-03-01T12:00:00Z"


def test_invalid_without_a_previous_config_says_pods_get_no_policy() -> None:
    (ready, _, _) = status.invalid(
        reason=status.REASON_INVALID_SPEC, message="bad", kept_config_map=None
    )

    assert "No config has been compiled yet" in ready.message


def test_conditions_of_other_types_are_kept_in_place() -> None:
    current: list[dict[str, Any]] = [
        {"type": "Injected", "status": "True", "reason": "X", "message": ""}
    ]

    merged = ready_conditions(T1, current)

    assert merged[0] == current[0]
    assert [c["type"] for c in merged] == ["Injected", "Ready", "Invalid", "SelectorOverlap"]


def test_overlap_warning_is_a_true_condition_with_the_message() -> None:
    conds = status.merge(
        None,
        status.ready(config_map="cm", compiled_hash="h", overlap="overlaps with b"),
        generation=None,
        now=T1,
    )

    overlap = status.find(conds, status.SELECTOR_OVERLAP)
    assert overlap is not None
    assert overlap["status"] == "True"
    assert overlap["message"] == "overlaps with b"
    assert "observedGeneration" not in overlap
    assert status.is_true(conds, "SelectorOverlap")
    assert not status.is_true(conds, "Invalid")
    assert not status.is_true(conds, "Missing")


def test_apply_failure_only_touches_ready() -> None:
    conds = status.merge(
        ready_conditions(T1), status.apply_failed(message="forbidden"), generation=1, now=T2
    )

    assert [(c["type"], c["status"]) for c in conds] == [
        ("Ready", "False"),
        ("Invalid", "False"),
        ("SelectorOverlap", "False"),
    ]
    assert conds[0]["reason"] == status.REASON_APPLY_FAILED
