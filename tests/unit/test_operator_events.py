"""events.py: occurrences aggregate into one Event per object, type and reason, written at
once when new and at most every ``interval`` when repeated. (Writing to a real API server is
in tests/integration/test_injection_webhook.py.)"""

from __future__ import annotations

from aiguard_operator.events import MAX_MESSAGE, ObjectRef, Recorder

RS = ObjectRef("apps/v1", "ReplicaSet", "web-7d9f8c6b5", "team-a", "uid-1")
JOB = ObjectRef("batch/v1", "Job", "nightly", "team-a", "uid-2")


class Clock:
    def __init__(self) -> None:
        self.now = 1_760_000_000.0

    def __call__(self) -> float:
        return self.now


def recorder(
    clock: Clock, *, interval: float = 5.0, expire: float = 600.0, max_series: int = 4096
) -> Recorder:
    return Recorder(
        component="aiguard-operator",
        instance="test",
        interval=interval,
        expire=expire,
        max_series=max_series,
        clock=clock,
    )


def test_when_a_rollout_repeats_a_reason_then_one_series_counts_them() -> None:
    clock = Clock()
    rec = recorder(clock)

    for i in range(100):
        clock.now += 0.01
        rec.record(RS, type="Warning", reason="HostNetwork", message=f"pod web-{i}: host network")

    (series,) = rec.series()
    assert series.count == 100
    assert series.message == "pod web-99: host network"  # the latest occurrence
    assert series.last - series.first < 1.1


def test_different_objects_types_and_reasons_are_different_series() -> None:
    rec = recorder(Clock())

    rec.record(RS, type="Warning", reason="HostNetwork", message="m")
    rec.record(RS, type="Warning", reason="PolicyNotReady", message="m")
    rec.record(RS, type="Normal", reason="HostNetwork", message="m")
    rec.record(JOB, type="Warning", reason="HostNetwork", message="m")

    assert len(rec.series()) == 4
    assert len({s.name for s in rec.series()}) == 4


def test_a_new_series_is_due_at_once_a_repeat_after_the_interval() -> None:
    clock = Clock()
    rec = recorder(clock, interval=5.0)
    rec.record(RS, type="Warning", reason="HostNetwork", message="m")

    (due,) = rec.due()
    manifest = rec.manifest(due)
    due.written, due.written_at = due.count, clock.now  # as a successful write leaves it

    assert manifest["count"] == 1
    assert manifest["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web-7d9f8c6b5",
        "namespace": "team-a",
        "uid": "uid-1",
    }
    assert manifest["metadata"]["namespace"] == "team-a"
    assert manifest["metadata"]["name"].startswith("web-7d9f8c6b5.")
    assert manifest["firstTimestamp"] == manifest["lastTimestamp"]
    assert rec.due() == []  # written, nothing new

    for _ in range(9):
        clock.now += 0.1
        rec.record(RS, type="Warning", reason="HostNetwork", message="m2")
    assert rec.due() == []  # repeats wait for the interval

    clock.now += 5.0
    (again,) = rec.due()
    assert rec.update(again) == {
        "count": 10,
        "lastTimestamp": rec.manifest(again)["lastTimestamp"],
        "message": "m2",
    }


def test_a_quiet_series_is_forgotten_and_the_next_occurrence_starts_a_new_event() -> None:
    clock = Clock()
    rec = recorder(clock, expire=60.0)
    rec.record(RS, type="Warning", reason="HostNetwork", message="m")
    (first,) = rec.due()
    first.written = first.count

    clock.now += 61
    rec.record(RS, type="Warning", reason="HostNetwork", message="m")

    (second,) = rec.series()
    assert second.count == 1
    assert second.name != first.name


def test_the_table_is_bounded_and_unwritten_series_are_kept() -> None:
    clock = Clock()
    rec = recorder(clock, max_series=2)
    rec.record(RS, type="Warning", reason="A", message="m")
    rec.record(RS, type="Warning", reason="B", message="m")

    rec.record(RS, type="Warning", reason="C", message="m")  # nothing written yet: dropped
    assert sorted(s.reason for s in rec.series()) == ["A", "B"]

    for s in rec.series():
        s.written = s.count
    clock.now += 1
    rec.record(RS, type="Warning", reason="A", message="m")  # A is now the newest
    rec.record(RS, type="Warning", reason="C", message="m")  # B, written and oldest, goes
    assert sorted(s.reason for s in rec.series()) == ["A", "C"]


def test_long_messages_are_cut() -> None:
    rec = recorder(Clock())

    rec.record(RS, type="Warning", reason="A", message="x" * 5000)

    (series,) = rec.series()
    assert len(series.message) == MAX_MESSAGE
    assert series.message.endswith("…")


def test_an_object_without_uid_has_none_in_the_event() -> None:
    rec = recorder(Clock())
    bare = ObjectRef("v1", "Pod", "bare", "team-a")

    rec.record(bare, type="Warning", reason="A", message="m")

    (series,) = rec.series()
    assert "uid" not in rec.manifest(series)["involvedObject"]
