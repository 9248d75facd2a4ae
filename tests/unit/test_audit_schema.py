"""The audit event schema and the hash chain (``aiguard_api.audit``): what a verifier
reports for each kind of tampering, with the exact event."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pydantic
import pytest

from aiguard_api import audit
from aiguard_api.audit import ChainStart, ProblemKind
from tests.harness.auditdata import chain, edited

Events = list[dict[str, Any]]


def _delete(i: int) -> Callable[[Events], Events]:
    return lambda ev: ev[:i] + ev[i + 1 :]


def _swap(i: int, j: int) -> Callable[[Events], Events]:
    def swap(ev: Events) -> Events:
        ev = list(ev)
        ev[i], ev[j] = ev[j], ev[i]
        return ev

    return swap


def _edit(i: int, *, rehash: bool) -> Callable[[Events], Events]:
    def edit(ev: Events) -> Events:
        ev = list(ev)
        ev[i] = edited(ev[i], "gen_ai.usage.output_tokens", 9999, rehash=rehash)
        return ev

    return edit


def _duplicate(i: int) -> Callable[[Events], Events]:
    return lambda ev: [*ev[: i + 1], ev[i], *ev[i + 1 :]]


def _replace_middle(ev: Events) -> Events:
    """Event 3 swapped for a different, self-consistent event with the same sequence."""
    forged = chain(1, first=3, prev=ev[1]["hash"], t0=1_000_000.0)[0]
    return [*ev[:2], forged, *ev[3:]]


# (name, tamper, expected problems as (kind, sequence))
CASES: list[tuple[str, Callable[[Events], Events], list[tuple[ProblemKind, int]]]] = [
    ("intact", lambda ev: ev, []),
    ("edit_without_rehash", _edit(2, rehash=False), [(ProblemKind.EDITED, 3)]),
    ("edit_with_rehash", _edit(2, rehash=True), [(ProblemKind.BROKEN_LINK, 4)]),
    ("delete_middle", _delete(2), [(ProblemKind.GAP, 4)]),
    ("delete_first", _delete(0), [(ProblemKind.GAP, 2)]),
    ("reorder", _swap(1, 2), [(ProblemKind.REORDERED, 2)]),
    ("duplicate", _duplicate(1), [(ProblemKind.DUPLICATE, 2)]),
    ("replace_with_forgery", _replace_middle, [(ProblemKind.BROKEN_LINK, 4)]),
]


@pytest.mark.parametrize(("tamper", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_when_a_chain_is_tampered_then_each_problem_names_its_event(
    tamper: Callable[[Events], Events], expected: list[tuple[ProblemKind, int]]
) -> None:
    events = tamper(chain(5))
    problems = audit.verify_chain(events)
    assert [(p.kind, p.sequence) for p in problems] == expected
    for p in problems:
        assert p.instance == events[0]["instance"]
        assert p.position is not None
        assert events[p.position]["id"] == p.id


def test_when_a_purge_record_marks_the_start_then_a_purged_prefix_is_legitimate() -> None:
    events = chain(10)
    kept = events[4:]
    inst = events[0]["instance"]
    assert [(p.kind, p.sequence) for p in audit.verify_chain(kept)] == [(ProblemKind.GAP, 5)]
    start = ChainStart(5, events[3]["hash"], purge_id="p1")
    assert audit.verify_chain(kept, starts={inst: start}) == []
    # A start that does not match what was deleted is itself a finding.
    wrong = ChainStart(5, events[2]["hash"], purge_id="p1")
    problems = audit.verify_chain(kept, starts={inst: wrong})
    assert [(p.kind, p.sequence) for p in problems] == [(ProblemKind.BROKEN_LINK, 5)]


def test_when_events_are_missing_after_a_purge_start_then_a_gap_is_reported() -> None:
    events = chain(10)
    inst = events[0]["instance"]
    problems = audit.verify_chain(events[6:], starts={inst: ChainStart(5, events[3]["hash"])})
    assert [(p.kind, p.sequence) for p in problems] == [(ProblemKind.GAP, 7)]
    assert "5..6" in problems[0].message


def test_when_the_tail_is_deleted_then_the_head_reveals_it() -> None:
    events = chain(6)
    inst = events[0]["instance"]
    assert audit.verify_chain(events[:4]) == []  # undetectable offline ...
    problems = audit.verify_chain(events[:4], heads={inst: 6})  # ... but not against the head
    assert [(p.kind, p.sequence) for p in problems] == [(ProblemKind.TRUNCATED, 4)]


def test_when_two_events_claim_one_sequence_then_a_conflict_is_reported() -> None:
    events = chain(4)
    fork = chain(1, first=3, prev=events[1]["hash"], t0=2_000_000.0)[0]
    problems = audit.verify_chain([*events, fork])
    assert [(p.kind, p.sequence, p.position) for p in problems] == [(ProblemKind.CONFLICT, 3, 4)]


def test_when_chains_interleave_then_each_is_checked_on_its_own() -> None:
    a = chain(3, pod="pod-a")
    b = chain(3, pod="pod-b")
    mixed = [a[0], b[0], a[1], b[1], b[2], a[2]]
    assert audit.verify_chain(mixed) == []
    del mixed[3]  # b's sequence 2
    problems = audit.verify_chain(mixed)
    assert [(p.kind, p.instance, p.sequence) for p in problems] == [
        (ProblemKind.GAP, b[0]["instance"], 3)
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        {"schema": "other"},
        {"schema": audit.SCHEMA, "instance": "x/y/z", "sequence": 0, "id": "i"},
    ],
    ids=["string", "wrong_schema", "bad_sequence"],
)
def test_when_an_item_is_not_an_event_then_it_is_invalid(bad: Any) -> None:
    events: list[Any] = chain(2)
    events.insert(1, bad)
    problems = audit.verify_chain(events)
    assert [(p.kind, p.position) for p in problems] == [(ProblemKind.INVALID, 1)]


def test_problem_text_names_instance_sequence_id_and_position() -> None:
    events = _edit(1, rehash=False)(chain(3))
    (p,) = audit.verify_chain(events)
    text = str(p)
    assert text.startswith(
        f"edited: {events[1]['instance']} #2 id {events[1]['id']} (input item 2)"
    )


# ── the schema ───────────────────────────────────────────────────────────────────────────────


def test_a_complete_event_validates_and_keeps_unknown_fields() -> None:
    event = chain(1)[0]
    event["aiguard.future_field"] = 1
    parsed = audit.AuditEvent.model_validate(event)
    assert parsed.request_model == "gpt-4o"
    assert parsed.input_tokens == 12
    assert parsed.model_extra == {"aiguard.future_field": 1}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("id", "not-a-uuid"),
        ("sequence", 0),
        ("hash", "md5:abc"),
        ("time", "yesterday"),
        ("aiguard.input.hash", "sha1:00"),
        ("schema", "aiguard.dev/audit/v2"),
        ("aiguard.mode", "shadow"),
    ],
)
def test_malformed_fields_are_rejected(key: str, value: Any) -> None:
    event = chain(1)[0]
    event[key] = value
    with pytest.raises(pydantic.ValidationError):
        audit.AuditEvent.model_validate(event)


def test_model_drift_is_optional_null_or_the_previous_model_and_fingerprint() -> None:
    event = chain(1)[0]
    assert audit.MODEL_DRIFT not in event  # events written before the field existed
    assert audit.AuditEvent.model_validate(event).model_drift is None
    event[audit.MODEL_DRIFT] = None
    assert audit.AuditEvent.model_validate(event).model_drift is None
    event[audit.MODEL_DRIFT] = {"previous_model": "gpt-4o-2024-08-06", "previous_fingerprint": None}
    drift = audit.AuditEvent.model_validate(event).model_drift
    assert drift is not None
    assert drift.previous_model == "gpt-4o-2024-08-06"
    assert drift.previous_fingerprint is None
    event[audit.MODEL_DRIFT] = {"previous_model": 4}
    with pytest.raises(pydantic.ValidationError):
        audit.AuditEvent.model_validate(event)


def test_hash_covers_everything_but_itself_and_ignores_key_order() -> None:
    event = chain(1)[0]
    reordered = dict(reversed(list(event.items())))
    assert audit.event_hash(reordered) == event["hash"]
    assert audit.event_hash({**event, "hash": "sha256:" + "f" * 64}) == event["hash"]
    assert audit.event_hash({**event, "user.id": "mallory"}) != event["hash"]


def test_hash_and_line_is_the_canonical_line_of_the_hashed_event() -> None:
    event = chain(1)[0]
    body = {k: v for k, v in event.items() if k != "hash"}
    own, line = audit.hash_and_line(body)
    assert own == event["hash"]
    assert line == audit.canonical(event) + b"\n"
    assert audit.hash_and_line({"a": 1}) == (
        audit.event_hash({"a": 1}),
        b'{"a":1,"hash":"' + audit.event_hash({"a": 1}).encode() + b'"}\n',
    )


def test_content_hash_plain_and_keyed() -> None:
    segments = [("user", "my card is 4111 1111 1111 1111"), ("system", "be nice")]
    plain = audit.content_hash(segments)
    keyed = audit.content_hash(segments, b"k" * 32)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", plain)
    assert re.fullmatch(r"hmac-sha256:[0-9a-f]{64}", keyed)
    assert audit.content_hash(segments, b"other-key") != keyed
    # Segment boundaries and roles are part of the canonical form.
    assert audit.content_hash([("user", "ab")]) != audit.content_hash(
        [("user", "a"), ("user", "b")]
    )
    assert audit.content_hash([("user", "a")]) != audit.content_hash([("system", "a")])


def test_event_ids_are_uuid7_and_strictly_increasing_even_in_one_millisecond() -> None:
    ids = audit.EventIds()
    values = [ids.new(1_700_000_000.0) for _ in range(5000)]  # > 4096 in one ms
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    uuid7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    assert all(uuid7.fullmatch(v) for v in values)
    assert ids.new(1_699_999_999.0) > values[-1]  # the clock stepped back


def test_purge_record_gives_chain_starts() -> None:
    events = chain(3)
    record = audit.PurgeRecord(
        id="p-1",
        time=audit.format_time(0),
        namespace="team-a",
        policy="test-policy",
        rule="spec.audit.retentionDays=30",
        retention_days=30,
        cutoff=audit.format_time(0),
        count=2,
        oldest=None,
        newest=None,
        chains=[
            audit.PurgedChain(
                instance=events[0]["instance"],
                first_sequence=1,
                last_sequence=2,
                last_hash=events[1]["hash"],
                count=2,
            )
        ],
    )
    starts = record.starts()
    assert audit.verify_chain(events[2:], starts=starts) == []
    again = audit.PurgeRecord.model_validate_json(record.model_dump_json(by_alias=True))
    assert again == record
