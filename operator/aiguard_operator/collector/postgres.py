"""The PostgreSQL store (``AIGUARD_COLLECTOR_POSTGRES_DSN``), for collectors that outgrow one
SQLite file. Same tables and semantics as :class:`~.store.SQLiteStore` (see
:mod:`aiguard_operator.collector.store`); asyncpg with a small connection pool, every write
in one transaction. Needs the optional ``asyncpg`` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from aiguard_api import audit
from aiguard_operator.collector.store import (
    CAPTURE_SELECT,
    MAX_PAGE,
    ChainInfo,
    EventPage,
    EventQuery,
    Ingest,
    InsertResult,
    PurgeQuery,
    PurgeRequest,
    StoredCapture,
    decode_cursor,
    encode_cursor,
    purge_record,
    stored_capture,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    time_us BIGINT NOT NULL,
    namespace TEXT NOT NULL,
    pod TEXT NOT NULL,
    policy TEXT NOT NULL,
    hash TEXT NOT NULL,
    body TEXT NOT NULL,
    received_us BIGINT NOT NULL,
    UNIQUE (instance, sequence)
);
CREATE INDEX IF NOT EXISTS events_time ON events (time_us, id);
CREATE INDEX IF NOT EXISTS events_group ON events (namespace, policy, time_us);
CREATE TABLE IF NOT EXISTS conflicts (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    body TEXT NOT NULL,
    received_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS chains (
    instance TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    pod TEXT NOT NULL,
    service_account TEXT NOT NULL,
    last_sequence BIGINT NOT NULL,
    last_hash TEXT NOT NULL,
    first_seen_us BIGINT NOT NULL,
    last_seen_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS purges (
    id TEXT PRIMARY KEY,
    time_us BIGINT NOT NULL,
    namespace TEXT NOT NULL,
    policy TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS purges_time ON purges (time_us);
CREATE TABLE IF NOT EXISTS starts (
    instance TEXT PRIMARY KEY,
    sequence BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    purge_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS captures (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    time_us BIGINT NOT NULL,
    namespace TEXT NOT NULL,
    policy TEXT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_group ON captures (namespace, policy, time_us);
CREATE INDEX IF NOT EXISTS captures_chain ON captures (instance, sequence);
"""


class PostgresStore:
    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 4) -> None:
        self.dsn = dsn
        self._min, self._max = min_size, max_size
        self._pool: Any = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=self._min, max_size=self._max)
        # One schema creation at a time, across collectors sharing the database.
        async with self._pool.acquire() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock(7157414)")
            await con.execute(_SCHEMA)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def insert(self, events: Sequence[Ingest], *, received_us: int) -> InsertResult:
        result = InsertResult()
        heads: dict[str, Ingest] = {}
        async with self._pool.acquire() as con, con.transaction():
            for e in events:
                inserted = await con.fetchval(
                    "INSERT INTO events (id, instance, sequence, time_us, namespace, pod, policy, "
                    "hash, body, received_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
                    "ON CONFLICT DO NOTHING RETURNING 1",
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
                )
                if inserted:
                    result.accepted += 1
                    if e.capture is not None:
                        await con.execute(
                            "INSERT INTO captures (id, instance, sequence, time_us, namespace, "
                            "policy, key_id, nonce, ciphertext) "
                            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                            e.id,
                            e.instance,
                            e.sequence,
                            e.time_us,
                            e.namespace,
                            e.policy,
                            e.capture.key_id,
                            e.capture.nonce,
                            e.capture.ciphertext,
                        )
                    head = heads.get(e.instance)
                    if head is None or e.sequence > head.sequence:
                        heads[e.instance] = e
                elif await con.fetchval("SELECT 1 FROM events WHERE id = $1", e.id):
                    result.duplicates += 1
                elif await con.fetchval(
                    "INSERT INTO conflicts (id, instance, sequence, body, received_us) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
                    e.id,
                    e.instance,
                    e.sequence,
                    e.body,
                    received_us,
                ):
                    result.conflicts += 1
                else:
                    result.duplicates += 1
            for e in heads.values():
                await con.execute(
                    "INSERT INTO chains (instance, namespace, pod, service_account, "
                    "last_sequence, last_hash, first_seen_us, last_seen_us) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (instance) DO UPDATE SET "
                    "last_hash = CASE WHEN EXCLUDED.last_sequence > chains.last_sequence "
                    "  THEN EXCLUDED.last_hash ELSE chains.last_hash END, "
                    "last_sequence = GREATEST(chains.last_sequence, EXCLUDED.last_sequence), "
                    "last_seen_us = EXCLUDED.last_seen_us",
                    e.instance,
                    e.namespace,
                    e.pod,
                    e.service_account,
                    e.sequence,
                    e.hash,
                    received_us,
                )
        return result

    async def events(self, q: EventQuery) -> EventPage:
        where: list[str] = []
        args: list[Any] = []

        def add(clause: str, value: Any) -> None:
            args.append(value)
            where.append(clause.replace("?", f"${len(args)}"))

        if q.namespace is not None:
            add("namespace = ?", q.namespace)
        if q.policy is not None:
            add("policy = ?", q.policy)
        if q.instance is not None:
            add("instance = ?", q.instance)
        if q.start_us is not None:
            add("time_us >= ?", q.start_us)
        if q.end_us is not None:
            add("time_us < ?", q.end_us)
        keys = ("time_us", "id") if q.order == "time" else ("instance", "sequence")
        if q.after is not None:
            a, b = decode_cursor(q.after)
            args += [a, b]
            where.append(f"({keys[0]}, {keys[1]}) > (${len(args) - 1}, ${len(args)})")
        limit = max(1, min(q.limit, MAX_PAGE))
        args.append(limit + 1)
        sql = (
            f"SELECT body, {keys[0]}, {keys[1]} FROM events"  # noqa: S608 - fixed columns
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY {keys[0]}, {keys[1]} LIMIT ${len(args)}"
        )
        rows = await self._pool.fetch(sql, *args)
        more = len(rows) > limit
        rows = rows[:limit]
        token = encode_cursor(rows[-1][1], rows[-1][2]) if more and rows else None
        return EventPage([str(r[0]) for r in rows], token)

    async def chain(self, instance: str) -> ChainInfo | None:
        found = await self._chains(" WHERE c.instance = $1", [instance])
        return found[0] if found else None

    async def chains(self, namespace: str | None = None) -> list[ChainInfo]:
        if namespace is None:
            return await self._chains("", [])
        return await self._chains(" WHERE c.namespace = $1", [namespace])

    async def _chains(self, where: str, args: list[Any]) -> list[ChainInfo]:
        sql = (
            "SELECT c.instance, c.namespace, c.pod, c.service_account, c.last_sequence, "
            "c.last_hash, c.first_seen_us, c.last_seen_us, "
            "(SELECT COUNT(*) FROM events e WHERE e.instance = c.instance), "
            "(SELECT MIN(sequence) FROM events e WHERE e.instance = c.instance), "
            "(SELECT COUNT(*) FROM conflicts x WHERE x.instance = c.instance), "
            "s.sequence, s.prev_hash, s.purge_id "
            "FROM chains c LEFT JOIN starts s ON s.instance = c.instance"
        )
        rows = await self._pool.fetch(sql + where + " ORDER BY 1", *args)
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

    async def groups(self) -> list[tuple[str, str]]:
        rows = await self._pool.fetch("SELECT DISTINCT namespace, policy FROM events ORDER BY 1, 2")
        return [(str(r[0]), str(r[1])) for r in rows]

    async def purge(self, req: PurgeRequest, *, purge_id: str) -> audit.PurgeRecord:
        cutoff_us = int(req.cutoff * 1e6)
        chains: list[audit.PurgedChain] = []
        total = 0
        captures = 0
        oldest: int | None = None
        newest: int | None = None
        async with self._pool.acquire() as con, con.transaction():
            capture_cutoff = req.capture_cutoff
            if capture_cutoff is not None:
                captures += _deleted(
                    await con.execute(
                        "DELETE FROM captures WHERE namespace = $1 AND policy = $2 "
                        "AND time_us < $3",
                        req.namespace,
                        req.policy,
                        int(capture_cutoff * 1e6),
                    )
                )
            instances = await con.fetch(
                "SELECT DISTINCT instance FROM events "
                "WHERE namespace = $1 AND policy = $2 AND time_us < $3 ORDER BY 1",
                req.namespace,
                req.policy,
                cutoff_us,
            )
            for (inst,) in instances:
                stop = await con.fetchval(
                    "SELECT MIN(sequence) FROM events WHERE instance = $1 AND "
                    "(time_us >= $2 OR namespace != $3 OR policy != $4)",
                    inst,
                    cutoff_us,
                    req.namespace,
                    req.policy,
                )
                bound = (stop - 1) if stop is not None else (1 << 62)
                first, last, count, t0, t1 = await con.fetchrow(
                    "SELECT MIN(sequence), MAX(sequence), COUNT(*), MIN(time_us), MAX(time_us) "
                    "FROM events WHERE instance = $1 AND sequence <= $2",
                    inst,
                    bound,
                )
                if not count:
                    continue
                last_hash = await con.fetchval(
                    "SELECT hash FROM events WHERE instance = $1 AND sequence = $2", inst, last
                )
                await con.execute(
                    "DELETE FROM events WHERE instance = $1 AND sequence <= $2", inst, bound
                )
                captures += _deleted(
                    await con.execute(
                        "DELETE FROM captures WHERE instance = $1 AND sequence <= $2", inst, bound
                    )
                )
                await con.execute(
                    "INSERT INTO starts (instance, sequence, prev_hash, purge_id) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (instance) DO UPDATE SET "
                    "sequence = EXCLUDED.sequence, prev_hash = EXCLUDED.prev_hash, "
                    "purge_id = EXCLUDED.purge_id",
                    inst,
                    last + 1,
                    last_hash,
                    purge_id,
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
            await con.execute(
                "INSERT INTO purges (id, time_us, namespace, policy, record) "
                "VALUES ($1, $2, $3, $4, $5)",
                purge_id,
                int(req.now * 1e6),
                req.namespace,
                req.policy,
                record.model_dump_json(by_alias=True),
            )
        return record

    async def purges(self, q: PurgeQuery) -> list[audit.PurgeRecord]:
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("namespace = ?", q.namespace),
            ("policy = ?", q.policy),
            ("time_us >= ?", q.start_us),
            ("time_us < ?", q.end_us),
        ):
            if value is not None:
                args.append(value)
                where.append(clause.replace("?", f"${len(args)}"))
        args.append(q.limit)
        sql = "SELECT record FROM purges" + (  # noqa: S608 - fixed clauses, values bound
            " WHERE " + " AND ".join(where) if where else ""
        )
        rows = await self._pool.fetch(sql + f" ORDER BY time_us, id LIMIT ${len(args)}", *args)
        return [audit.PurgeRecord.model_validate_json(r[0]) for r in rows]

    async def capture(self, event_id: str) -> StoredCapture | None:
        row = await self._pool.fetchrow(CAPTURE_SELECT + "$1", event_id)
        return None if row is None else stored_capture(row)


def _deleted(status: str) -> int:
    """Rows a DELETE removed, from asyncpg's status string (``DELETE 3``)."""
    return int(status.rsplit(" ", 1)[-1])
