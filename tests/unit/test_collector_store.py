"""The collector's stores, SQLite and PostgreSQL (a private Debian PostgreSQL; skipped when it
is not installed), held to the same specification: idempotent ingest, paging, chain heads,
prefix-only retention purges that are recorded and keep chains verifiable."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from aiguard_api import audit
from aiguard_operator.collector import retention
from aiguard_operator.collector.capture import CaptureCipher
from aiguard_operator.collector.postgres import PostgresStore
from aiguard_operator.collector.server import verify_stored
from aiguard_operator.collector.store import (
    EventQuery,
    Ingest,
    PurgeQuery,
    SQLiteStore,
    Store,
)
from tests.harness.auditdata import chain
from tests.harness.postgres import PrivatePostgres, find_bin

DAY = 86400.0


def ingest(events: list[dict[str, Any]]) -> list[Ingest]:
    return [
        Ingest(
            id=e["id"],
            instance=e["instance"],
            sequence=e["sequence"],
            time_us=round(audit.parse_time(e["time"]) * 1e6),
            namespace=e["k8s.namespace.name"],
            pod=e["k8s.pod.name"],
            service_account=e["aiguard.workload.service_account"],
            policy=e["aiguard.policy.name"],
            hash=e["hash"],
            body=audit.canonical(e).decode(),
        )
        for e in events
    ]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres | None]:
    bin_dir = find_bin()
    if bin_dir is None:
        yield None
        return
    with PrivatePostgres(bin_dir) as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PrivatePostgres | None
) -> AsyncIterator[Store]:
    s: Store
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "audit.db")
    else:
        # A missing PostgreSQL fails here rather than skipping: `make system-deps` installs it.
        assert postgres is not None, "PostgreSQL is not installed: run `make system-deps`"
        name = f"t_{uuid.uuid4().hex[:12]}"
        con = await asyncpg.connect(postgres.dsn)
        try:
            await con.execute(f"CREATE DATABASE {name}")
        finally:
            await con.close()
        s = PostgresStore(postgres.dsn.rsplit("/", 1)[0] + "/" + name)
    await s.open()
    yield s
    await s.close()


async def test_ingest_is_idempotent_and_forks_are_kept_apart(store: Store) -> None:
    events = chain(5)
    r = await store.insert(ingest(events[:3]), received_us=1)
    assert (r.accepted, r.duplicates, r.conflicts) == (3, 0, 0)
    fork = chain(1, first=3, prev=events[1]["hash"], t0=5_000_000.0)[0]
    r = await store.insert(ingest([*events[1:], fork]), received_us=2)  # a resend + 2 new
    assert (r.accepted, r.duplicates, r.conflicts) == (2, 2, 1)
    info = await store.chain(events[0]["instance"])
    assert info is not None
    assert (info.events, info.first_sequence, info.last_sequence) == (5, 1, 5)
    assert info.last_hash == events[-1]["hash"]
    assert info.conflicts == 1
    assert await verify_stored(store, info) == []


async def test_queries_page_in_time_or_sequence_order(store: Store) -> None:
    # whole seconds: the window bounds below are then exactly the stored microseconds (a
    # fractional t0 made round() and the event's formatted time disagree by 1 µs at times)
    t0 = float(int(time.time()) - 100)
    a = chain(7, pod="pod-a", t0=t0, step=2)
    b = chain(5, pod="pod-b", t0=t0 + 1, step=2, policy="other")
    await store.insert(ingest(a + b), received_us=1)

    async def collect(q: EventQuery) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = None
        while True:
            page = await store.events(dataclasses.replace(q, after=after))
            out += [json.loads(x) for x in page.bodies]
            if page.next is None:
                return out
            after = page.next

    by_time = await collect(EventQuery(limit=3))
    assert [e["time"] for e in by_time] == sorted(e["time"] for e in a + b)
    by_seq = await collect(EventQuery(order="sequence", limit=4))
    assert [(e["instance"], e["sequence"]) for e in by_seq] == sorted(
        (e["instance"], e["sequence"]) for e in a + b
    )
    assert audit.verify_chain(by_seq) == []
    only_b = await collect(EventQuery(policy="other", limit=2))
    assert [e["id"] for e in only_b] == [e["id"] for e in b]
    window = await collect(EventQuery(start_us=round((t0 + 4) * 1e6), end_us=round((t0 + 8) * 1e6)))
    assert [e["time"] for e in window] == [
        audit.format_time(t) for t in (t0 + 4, t0 + 5, t0 + 6, t0 + 7)
    ]


async def test_retention_purges_a_recorded_prefix_and_the_rest_still_verifies(
    store: Store,
) -> None:
    now = time.time()
    old = chain(6, t0=now - 40 * DAY, step=60)
    recent = chain(4, t0=now - 1 * DAY, step=60, first=7, prev=old[-1]["hash"])
    # An old timestamp after a recent one (the clock stepped back): not in the prefix.
    late = chain(1, t0=now - 50 * DAY, first=11, prev=recent[-1]["hash"])
    other_policy = chain(3, pod="pod-x", policy="keep-me", t0=now - 40 * DAY)
    await store.insert(ingest(old + recent + late + other_policy), received_us=1)

    async def lookup() -> dict[tuple[str, str], int]:
        return {("team-a", "test-policy"): 30}

    records = await retention.run_purge(store, lookup, now=now)
    by_policy = {r.policy: r for r in records}
    rec = by_policy["test-policy"]
    assert rec.count == 6
    assert rec.rule == "AIPolicy team-a/test-policy spec.audit.retentionDays=30"
    assert rec.retention_days == 30
    assert rec.oldest == old[0]["time"]
    assert rec.newest == old[-1]["time"]
    assert [(c.first_sequence, c.last_sequence, c.last_hash) for c in rec.chains] == [
        (1, 6, old[-1]["hash"])
    ]
    # A policy that no longer exists keeps the default retention (and the record says so).
    assert by_policy["keep-me"].count == 0
    assert "not found" in by_policy["keep-me"].rule
    assert by_policy["keep-me"].retention_days == retention.DEFAULT_RETENTION_DAYS

    info = await store.chain(old[0]["instance"])
    assert info is not None
    assert info.first_sequence == 7
    assert info.start == audit.ChainStart(7, old[-1]["hash"], rec.id)
    assert await verify_stored(store, info) == []

    again = await retention.run_purge(store, lookup, now=now + 1)
    assert [r.count for r in again] == [0, 0]
    listed = await store.purges(PurgeQuery(namespace="team-a", policy="test-policy"))
    assert [r.id for r in listed] == [rec.id, next(r.id for r in again if r.policy == rec.policy)]
    assert listed[0] == rec


# --------------------------------------------------------------------------- captured content


async def test_captures_are_stored_with_new_events_only_and_purged_sooner(store: Store) -> None:
    cipher = CaptureCipher([bytes(range(32))])
    now = time.time()
    events = chain(4, t0=now - 10 * DAY, step=DAY)  # 10, 9, 8 and 7 days old

    def sealed(e: dict[str, Any], text: str) -> Ingest:
        (row,) = ingest([e])
        box = cipher.seal(
            {"input": [["user", text]]},
            event_id=e["id"],
            namespace=row.namespace,
            policy=row.policy,
        )
        return dataclasses.replace(row, capture=box)

    rows = [sealed(e, f"prompt {i}") for i, e in enumerate(events)]
    await store.insert(rows[:2], received_us=1)
    # A resend carries a capture again: the stored one is not replaced, none is added.
    resend = [sealed(events[0], "something else"), *rows[2:]]
    r = await store.insert(resend, received_us=2)
    assert (r.accepted, r.duplicates) == (2, 1)

    first = await store.capture(events[0]["id"])
    assert first is not None
    assert cipher.open(
        first.sealed, event_id=first.id, namespace=first.namespace, policy=first.policy
    ) == {"input": [["user", "prompt 0"]]}

    async def lookup() -> dict[tuple[str, str], retention.Retention]:
        return {("team-a", "test-policy"): retention.Retention(days=30, capture_days=8)}

    (rec,) = await retention.run_purge(store, lookup, now=now)
    # Captures older than 8 days go (events 0 and 1, 10 and 9 days old); all events stay.
    assert (rec.count, rec.captures, rec.capture_retention_days) == (0, 2, 8)
    assert rec.capture_cutoff == audit.format_time(now - 8 * DAY)
    assert await store.capture(events[0]["id"]) is None
    assert await store.capture(events[1]["id"]) is None
    assert await store.capture(events[2]["id"]) is not None
    info = await store.chain(events[0]["instance"])
    assert info is not None
    assert info.events == 4
    assert await verify_stored(store, info) == []

    # When the events themselves go, their captures go with them.
    async def short() -> dict[tuple[str, str], retention.Retention]:
        return {("team-a", "test-policy"): retention.Retention(days=5, capture_days=5)}

    (rec,) = await retention.run_purge(store, short, now=now)
    assert (rec.count, rec.captures) == (4, 2)
    assert await store.capture(events[3]["id"]) is None
