"""Audit spool append throughput: events/s with fsync group commit, by concurrency.

``C`` asyncio tasks each append events back to back (as ``C`` concurrent requests would, each
awaiting its event's durability before its response completes) to a real spool in a
temporary directory on the same filesystem as the repository (override with ``--dir``).
Reported per concurrency: events/s, fsyncs, events per fsync (the group size), and the
append latency p50/p99 as a request sees it. ``fsync=off`` rows measure everything but the
disk (sealing: hashing and canonical JSON on the writer thread).

    python -m benchmarks.audit_spool [--events 20000] [--dir PATH]
        → benchmarks/results/audit_spool.json and a table
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.harness.auditdata import attributes

from aiguard_sidecar.audit.events import Draft
from aiguard_sidecar.audit.spool import Spool, SpoolIO
from benchmarks.common import HERE, machine, summarize, table, write_results


class CountingIO(SpoolIO):
    def __init__(self) -> None:
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)


def _draft(i: int) -> Draft:
    attrs = attributes(
        namespace="team-a", pod="bench-0", service_account="bench", policy="p", start=1e9 + i
    )
    prompt = "Summarise the attached quarterly report in three bullet points. " * 8  # ~0.5 KB
    return Draft(attrs, [("system", "be brief"), ("user", prompt)], [("output", "ok " * 60)], None)


async def _run(directory: Path, *, concurrency: int, events: int, fsync: bool) -> dict[str, Any]:
    io = CountingIO()
    spool = Spool(directory, namespace="team-a", pod="bench-0", fsync=fsync, io=io,
                  max_bytes=1 << 34)  # fmt: skip
    await asyncio.to_thread(spool.open)
    spool.start(asyncio.get_running_loop())
    per_task = max(1, events // concurrency)
    latencies: list[float] = []
    drafts = [_draft(i) for i in range(per_task * concurrency)]

    async def worker(k: int) -> None:
        for j in range(per_task):
            t0 = time.perf_counter()
            await spool.append(drafts[k * per_task + j])
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    await asyncio.to_thread(spool.stop)
    total = per_task * concurrency
    lat = summarize([x * 1000 for x in latencies])
    return {
        "concurrency": concurrency,
        "fsync": fsync,
        "events": total,
        "seconds": round(elapsed, 3),
        "events_per_second": round(total / elapsed),
        "fsyncs": io.fsyncs,
        "events_per_fsync": round(total / io.fsyncs, 1) if io.fsyncs else None,
        "append_ms_p50": round(lat["p50"], 3),
        "append_ms_p99": round(lat["p99"], 3),
        "bytes": spool.bytes(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--dir", type=Path, default=None, help="where the spool is written")
    args = ap.parse_args(argv)
    base = args.dir or HERE.parent / ".local"
    base.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for fsync in (True, False):
        for concurrency in (1, 8, 64, 256):
            n = args.events if fsync and concurrency > 1 else min(args.events, 3000)
            if not fsync:
                n = args.events
            with tempfile.TemporaryDirectory(prefix="audit-spool-", dir=base) as tmp:
                rows.append(
                    asyncio.run(_run(Path(tmp), concurrency=concurrency, events=n, fsync=fsync))
                )
    doc = {"benchmark": "audit_spool", "machine": machine(), "filesystem_dir": str(base),
           "results": rows}  # fmt: skip
    path = write_results("audit_spool", doc)
    print(
        table(
            [
                [
                    r["fsync"],
                    r["concurrency"],
                    r["events"],
                    r["events_per_second"],
                    r["fsyncs"],
                    r["events_per_fsync"],
                    r["append_ms_p50"],
                    r["append_ms_p99"],
                ]
                for r in rows
            ],
            [
                "fsync",
                "concurrency",
                "events",
                "events/s",
                "fsyncs",
                "per fsync",
                "p50 ms",
                "p99 ms",
            ],
        )
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
