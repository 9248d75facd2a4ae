"""Where the collector keeps events: the :class:`Store` interface and its SQLite implementation
(PostgreSQL: :mod:`aiguard_operator.collector.postgres`).

Tables (same shape in both backends)::

    events     id PK, instance, sequence, time_us, namespace, pod, policy, hash, body,
               received_us;  UNIQUE (instance, sequence)
               body is the event's canonical JSON (aiguard_api.audit.canonical), so a
               verifier recomputes exactly the hash the sidecar wrote
    conflicts  events that claimed an (instance, sequence) another event already holds:
               kept as evidence (a fork), never served as part of the chain
    chains     one row per instance: identity, the highest sequence received and its hash
               (the head: a chain that ends before it was truncated), first/last seen
    purges     one row per purge run per (namespace, policy): PurgeRecord JSON
    starts     instance → where its chain now begins (sequence, prev_hash, purge id),
               written by purges in the same transaction as the deletion

Idempotency: an event id already stored is a *duplicate* (dropped, counted). Retention
(:meth:`Store.purge`) deletes only a *prefix* of each chain: the events before the first one
that is recent enough (or belongs to another policy), so what remains is always a contiguous
chain whose start the ``starts`` table explains.

SQLite runs on one dedicated thread with one connection (WAL, ``synchronous=FULL``: an
acknowledged batch is on disk), so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

from aiguard_api import audit
from aiguard_operator.collector.capture import Sealed

_T = TypeVar("_T")
Order = Literal["time", "sequence"]
MAX_PAGE = 5000


@dataclass(frozen=True, slots=True)
class Ingest:
    """One validated event, ready to store."""

    id: str
    instance: str
    sequence: int
    time_us: int
    namespace: str
    pod: str
    service_account: str
    policy: str
    hash: str
    body: str
    capture: Sealed | None = None
    """The encrypted content capture that came with the event (stored only with it)."""


@dataclass(frozen=True, slots=True)
class StoredCapture:
    """A stored capture and what its associated data binds it to."""

    id: str
    namespace: str
    policy: str
    time_us: int
    sealed: Sealed


@dataclass(slots=True)
class InsertResult:
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0


@dataclass(frozen=True, slots=True)
class EventQuery:
    start_us: int | None = None
    """Events written at or after this time (Unix microseconds)."""
    end_us: int | None = None
    """... and before this time."""
    namespace: str | None = None
    policy: str | None = None
    instance: str | None = None
    order: Order = "time"
    after: str | None = None
    """The ``next`` token of the previous page."""
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class EventPage:
    bodies: list[str]
    next: str | None


@dataclass(frozen=True, slots=True)
class ChainInfo:
    instance: str
    namespace: str
    pod: str
    service_account: str
    events: int
    """Events stored now (after purges)."""
    first_sequence: int | None
    last_sequence: int
    """The head: the highest sequence ever received."""
    last_hash: str
    first_seen_us: int
    last_seen_us: int
    conflicts: int = 0
    start: audit.ChainStart | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "namespace": self.namespace,
            "pod": self.pod,
            "service_account": self.service_account,
            "events": self.events,
            "first_sequence": self.first_sequence,
            "head": {"sequence": self.last_sequence, "hash": self.last_hash},
            "first_seen": audit.format_time(self.first_seen_us / 1e6),
            "last_seen": audit.format_time(self.last_seen_us / 1e6),
            "conflicts": self.conflicts,
            "start": None
            if self.start is None
            else {
                "sequence": self.start.sequence,
                "prev_hash": self.start.prev_hash,
                "purge_id": self.start.purge_id,
            },
        }


@dataclass(frozen=True, slots=True)
class PurgeQuery:
    namespace: str | None = None
    policy: str | None = None
    start_us: int | None = None
    end_us: int | None = None
    limit: int = 1000


@dataclass(slots=True)
class PurgeRequest:
    namespace: str
    policy: str
    retention_days: int
    rule: str
    now: float = field(default_factory=time.time)
    capture_retention_days: int | None = None
    """Captured content goes after this many days (None: with its events only)."""

    @property
    def cutoff(self) -> float:
        return self.now - self.retention_days * 86400.0

    @property
    def capture_cutoff(self) -> float | None:
        days = self.capture_retention_days
        return None if days is None else self.now - min(days, self.retention_days) * 86400.0


class Store(Protocol):
    """What the collector needs from a database. Every method is safe to call concurrently."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert(self, events: Sequence[Ingest], *, received_us: int) -> InsertResult: ...

    async def events(self, q: EventQuery) -> EventPage: ...

    async def chain(self, instance: str) -> ChainInfo | None: ...

    async def chains(self, namespace: str | None = None) -> list[ChainInfo]: ...

    async def groups(self) -> list[tuple[str, str]]:
        """Every (namespace, policy) with stored events."""
        ...

    async def purge(self, req: PurgeRequest, *, purge_id: str) -> audit.PurgeRecord: ...

    async def purges(self, q: PurgeQuery) -> list[audit.PurgeRecord]: ...

    async def capture(self, event_id: str) -> StoredCapture | None: ...


# --------------------------------------------------------------------------- helpers


CAPTURE_SELECT: Final = (
    "SELECT id, namespace, policy, time_us, key_id, nonce, ciphertext FROM captures WHERE id = "
)
"""Both stores' capture lookup, up to the placeholder of the id (``?`` or ``$1``)."""


def stored_capture(row: Sequence[Any]) -> StoredCapture:
    """A row of :data:`CAPTURE_SELECT`."""
    return StoredCapture(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        int(row[3]),
        Sealed(str(row[4]), bytes(row[5]), bytes(row[6])),
    )


def encode_cursor(*parts: str | int) -> str:
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> list[Any]:
    """ValueError when ``token`` is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        parts = json.loads(raw)
    except (ValueError, TypeError) as e:
        raise ValueError("invalid page token") from e
    if not isinstance(parts, list) or len(parts) != 2:
        raise ValueError("invalid page token")
    return parts


def purge_record(
    req: PurgeRequest,
    *,
    purge_id: str,
    chains: list[audit.PurgedChain],
    count: int,
    oldest_us: int | None,
    newest_us: int | None,
    captures: int = 0,
) -> audit.PurgeRecord:
    capture_cutoff = req.capture_cutoff
    return audit.PurgeRecord(
        id=purge_id,
        time=audit.format_time(req.now),
        namespace=req.namespace,
        policy=req.policy,
        rule=req.rule,
        retention_days=req.retention_days,
        cutoff=audit.format_time(req.cutoff),
        count=count,
        oldest=None if oldest_us is None else audit.format_time(oldest_us / 1e6),
        newest=None if newest_us is None else audit.format_time(newest_us / 1e6),
        chains=chains,
        capture_retention_days=(
            None
            if req.capture_retention_days is None
            else min(req.capture_retention_days, req.retention_days)
        ),
        capture_cutoff=None if capture_cutoff is None else audit.format_time(capture_cutoff),
        captures=captures,
    )


# --------------------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    time_us INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    pod TEXT NOT NULL,
    policy TEXT NOT NULL,
    hash TEXT NOT NULL,
    body TEXT NOT NULL,
    received_us INTEGER NOT NULL,
    UNIQUE (instance, sequence)
);
CREATE INDEX IF NOT EXISTS events_time ON events (time_us, id);
CREATE INDEX IF NOT EXISTS events_group ON events (namespace, policy, time_us);
CREATE TABLE IF NOT EXISTS conflicts (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    body TEXT NOT NULL,
    received_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chains (
    instance TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    pod TEXT NOT NULL,
    service_account TEXT NOT NULL,
    last_sequence INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    first_seen_us INTEGER NOT NULL,
    last_seen_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purges (
    id TEXT PRIMARY KEY,
    time_us INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    policy TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS purges_time ON purges (time_us);
CREATE TABLE IF NOT EXISTS starts (
    instance TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    purge_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS captures (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    time_us INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    policy TEXT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_group ON captures (namespace, policy, time_us);
CREATE INDEX IF NOT EXISTS captures_chain ON captures (instance, sequence);
"""


class SQLiteStore:
    """The default store: one file (on a PersistentVolume in a cluster)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aiguard-db")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def call() -> _T:
            assert self._db is not None, "store not open"
            return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._pool, connect)

    async def close(self) -> None:
        def disconnect() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._pool, disconnect)
        self._pool.shutdown(wait=True)

    # ── ingest ───────────────────────────────────────────────────────────────────────────────

    async def insert(self, events: Sequence[Ingest], *, received_us: int) -> InsertResult:
        return await self._run(lambda db: _insert(db, events, received_us))

    # ── queries ──────────────────────────────────────────────────────────────────────────────

    async def events(self, q: EventQuery) -> EventPage:
        return await self._run(lambda db: _events(db, q))

    async def chain(self, instance: str) -> ChainInfo | None:
        found = await self._run(lambda db: _chains(db, instance=instance))
        return found[0] if found else None

    async def chains(self, namespace: str | None = None) -> list[ChainInfo]:
        return await self._run(lambda db: _chains(db, namespace=namespace))

    async def groups(self) -> list[tuple[str, str]]:
        def q(db: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = db.execute("SELECT DISTINCT namespace, policy FROM events ORDER BY 1, 2")
            return [(str(a), str(b)) for a, b in rows]

        return await self._run(q)

    # ── retention ────────────────────────────────────────────────────────────────────────────

    async def purge(self, req: PurgeRequest, *, purge_id: str) -> audit.PurgeRecord:
        return await self._run(lambda db: _purge(db, req, purge_id))

    async def purges(self, q: PurgeQuery) -> list[audit.PurgeRecord]:
        return await self._run(lambda db: _purges(db, q))

    async def capture(self, event_id: str) -> StoredCapture | None:
        def q(db: sqlite3.Connection) -> StoredCapture | None:
            row = db.execute(CAPTURE_SELECT + "?", (event_id,)).fetchone()
            return None if row is None else stored_capture(row)

        return await self._run(q)


class _Tx:
    """``with _Tx(db):`` — BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _insert(db: sqlite3.Connection, events: Sequence[Ingest], received_us: int) -> InsertResult:
    result = InsertResult()
    heads: dict[str, Ingest] = {}
    with _Tx(db):
        for e in events:
            cur = db.execute(
                "INSERT OR IGNORE INTO events (id, instance, sequence, time_us, namespace, pod, "
                "policy, hash, body, received_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    e.id,
                    e.instance,
                    e.sequence,
                    e.time_us,
                    e.namespace,
                    e.pod,
                    e.policy,
                    e.hash,
                    e.body,
                    received_us,
                ),
            )
            if cur.rowcount == 1:
                result.accepted += 1
                if e.capture is not None:
                    db.execute(
                        "INSERT INTO captures (id, instance, sequence, time_us, namespace, "
                        "policy, key_id, nonce, ciphertext) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            e.id,
                            e.instance,
                            e.sequence,
                            e.time_us,
                            e.namespace,
                            e.policy,
                            e.capture.key_id,
                            e.capture.nonce,
                            e.capture.ciphertext,
                        ),
                    )
            elif db.execute("SELECT 1 FROM events WHERE id = ?", (e.id,)).fetchone():
                result.duplicates += 1
                continue
            else:
                cur = db.execute(
                    "INSERT OR IGNORE INTO conflicts (id, instance, sequence, body, received_us) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (e.id, e.instance, e.sequence, e.body, received_us),
                )
                if cur.rowcount == 1:
                    result.conflicts += 1
                else:
                    result.duplicates += 1
                continue
            head = heads.get(e.instance)
            if head is None or e.sequence > head.sequence:
                heads[e.instance] = e
        for e in heads.values():
            db.execute(
                "INSERT INTO chains (instance, namespace, pod, service_account, last_sequence, "
                "last_hash, first_seen_us, last_seen_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (instance) DO UPDATE SET "
                "last_hash = CASE WHEN excluded.last_sequence > last_sequence "
                "  THEN excluded.last_hash ELSE last_hash END, "
                "last_sequence = MAX(last_sequence, excluded.last_sequence), "
                "last_seen_us = excluded.last_seen_us",
                (
                    e.instance,
                    e.namespace,
                    e.pod,
                    e.service_account,
                    e.sequence,
                    e.hash,
                    received_us,
                    received_us,
                ),
            )
    return result


def _events(db: sqlite3.Connection, q: EventQuery) -> EventPage:
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("namespace", q.namespace), ("policy", q.policy)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if q.instance is not None:
        where.append("instance = ?")
        args.append(q.instance)
    if q.start_us is not None:
        where.append("time_us >= ?")
        args.append(q.start_us)
    if q.end_us is not None:
        where.append("time_us < ?")
        args.append(q.end_us)
    keys = ("time_us", "id") if q.order == "time" else ("instance", "sequence")
    if q.after is not None:
        a, b = decode_cursor(q.after)
        where.append(f"({keys[0]}, {keys[1]}) > (?, ?)")
        args += [a, b]
    limit = max(1, min(q.limit, MAX_PAGE))
    sql = (
        f"SELECT body, {keys[0]}, {keys[1]} FROM events"  # noqa: S608 - fixed column names
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY {keys[0]}, {keys[1]} LIMIT ?"
    )
    rows = db.execute(sql, [*args, limit + 1]).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    token = encode_cursor(rows[-1][1], rows[-1][2]) if more and rows else None
    return EventPage([str(r[0]) for r in rows], token)


def _chains(
    db: sqlite3.Connection, *, instance: str | None = None, namespace: str | None = None
) -> list[ChainInfo]:
    where, args = "", []
    if instance is not None:
        where, args = " WHERE c.instance = ?", [instance]
    elif namespace is not None:
        where, args = " WHERE c.namespace = ?", [namespace]
    sql = (
        "SELECT c.instance, c.namespace, c.pod, c.service_account, c.last_sequence, c.last_hash, "
        "c.first_seen_us, c.last_seen_us, "
        "(SELECT COUNT(*) FROM events e WHERE e.instance = c.instance), "
        "(SELECT MIN(sequence) FROM events e WHERE e.instance = c.instance), "
        "(SELECT COUNT(*) FROM conflicts x WHERE x.instance = c.instance), "
        "s.sequence, s.prev_hash, s.purge_id "
        "FROM chains c LEFT JOIN starts s ON s.instance = c.instance"
    )
    rows = db.execute(sql + where + " ORDER BY 1", args).fetchall()
    return [
        ChainInfo(
            instance=r[0],
            namespace=r[1],
            pod=r[2],
            service_account=r[3],
            last_sequence=r[4],
            last_hash=r[5],
            first_seen_us=r[6],
            last_seen_us=r[7],
            events=r[8],
            first_sequence=r[9],
            conflicts=r[10],
            start=None if r[11] is None else audit.ChainStart(r[11], r[12], r[13]),
        )
        for r in rows
    ]


def _purge(db: sqlite3.Connection, req: PurgeRequest, purge_id: str) -> audit.PurgeRecord:
    cutoff_us = int(req.cutoff * 1e6)
    chains: list[audit.PurgedChain] = []
    total = 0
    captures = 0
    oldest: int | None = None
    newest: int | None = None
    with _Tx(db):
        capture_cutoff = req.capture_cutoff
        if capture_cutoff is not None:
            captures += db.execute(
                "DELETE FROM captures WHERE namespace = ? AND policy = ? AND time_us < ?",
                (req.namespace, req.policy, int(capture_cutoff * 1e6)),
            ).rowcount
        instances = [
            str(r[0])
            for r in db.execute(
                "SELECT DISTINCT instance FROM events "
                "WHERE namespace = ? AND policy = ? AND time_us < ? ORDER BY 1",
                (req.namespace, req.policy, cutoff_us),
            )
        ]
        for inst in instances:
            # The prefix: everything before the first event that must stay.
            (stop,) = db.execute(
                "SELECT MIN(sequence) FROM events WHERE instance = ? AND "
                "(time_us >= ? OR namespace != ? OR policy != ?)",
                (inst, cutoff_us, req.namespace, req.policy),
            ).fetchone()
            bound = (stop - 1) if stop is not None else (1 << 62)
            row = db.execute(
                "SELECT MIN(sequence), MAX(sequence), COUNT(*), MIN(time_us), MAX(time_us) "
                "FROM events WHERE instance = ? AND sequence <= ?",
                (inst, bound),
            ).fetchone()
            first, last, count, t0, t1 = row
            if not count:
                continue
            (last_hash,) = db.execute(
                "SELECT hash FROM events WHERE instance = ? AND sequence = ?", (inst, last)
            ).fetchone()
            db.execute("DELETE FROM events WHERE instance = ? AND sequence <= ?", (inst, bound))
            captures += db.execute(
                "DELETE FROM captures WHERE instance = ? AND sequence <= ?", (inst, bound)
            ).rowcount
            db.execute(
                "INSERT INTO starts (instance, sequence, prev_hash, purge_id) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (instance) DO UPDATE SET sequence = excluded.sequence, "
                "prev_hash = excluded.prev_hash, purge_id = excluded.purge_id",
                (inst, last + 1, last_hash, purge_id),
            )
            chains.append(
                audit.PurgedChain(
                    instance=inst,
                    first_sequence=first,
                    last_sequence=last,
                    last_hash=last_hash,
                    count=count,
                )
            )
            total += count
            oldest = t0 if oldest is None else min(oldest, t0)
            newest = t1 if newest is None else max(newest, t1)
        record = purge_record(
            req,
            purge_id=purge_id,
            chains=chains,
            count=total,
            oldest_us=oldest,
            newest_us=newest,
            captures=captures,
        )
        db.execute(
            "INSERT INTO purges (id, time_us, namespace, policy, record) VALUES (?, ?, ?, ?, ?)",
            (
                purge_id,
                int(req.now * 1e6),
                req.namespace,
                req.policy,
                record.model_dump_json(by_alias=True),
            ),
        )
    return record


def _purges(db: sqlite3.Connection, q: PurgeQuery) -> list[audit.PurgeRecord]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("namespace = ?", q.namespace),
        ("policy = ?", q.policy),
        ("time_us >= ?", q.start_us),
        ("time_us < ?", q.end_us),
    ):
        if value is not None:
            where.append(column)
            args.append(value)
    sql = "SELECT record FROM purges" + (  # noqa: S608 - fixed clauses, values bound
        " WHERE " + " AND ".join(where) if where else ""
    )
    rows = db.execute(sql + " ORDER BY time_us, id LIMIT ?", [*args, q.limit]).fetchall()
    return [audit.PurgeRecord.model_validate_json(r[0]) for r in rows]


def iter_chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
