"""The sidecar's durable audit spool: group commit, crash recovery, failing disks, delivery
bookkeeping. Real files in a temporary directory; failures come from an injected SpoolIO."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aiguard_api import audit
from aiguard_sidecar.audit.events import Draft
from aiguard_sidecar.audit.spool import SEGMENT_SUFFIX, Spool, SpoolIO, SpoolUnavailable
from tests.harness.auditdata import attributes

NS, POD = "team-a", "chatbot-5d9c-abcde"


def draft(n: int = 0) -> Draft:
    attrs = attributes(
        namespace=NS, pod=POD, service_account="chatbot", policy="test-policy", start=1e9 + n
    )
    return Draft(attrs, inputs=[("user", f"prompt {n}")], outputs=[("output", "ok")], key=None)


class CountingIO(SpoolIO):
    """Counts calls; ``fail`` (when set) decides per call whether to raise."""

    def __init__(self) -> None:
        self.writes = 0
        self.fsyncs = 0
        self.fail: Callable[[str], OSError | None] = lambda op: None

    def write(self, fd: int, data: bytes) -> int:
        self.writes += 1
        if (e := self.fail("write")) is not None:
            raise e
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        if (e := self.fail("fsync")) is not None:
            raise e
        super().fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        if (e := self.fail("truncate")) is not None:
            raise e
        super().truncate(fd, size)


def on_disk(directory: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for p in sorted(directory.glob(f"*{SEGMENT_SUFFIX}")):
        lines += [json.loads(x) for x in p.read_bytes().splitlines()]
    return lines


Open = Callable[..., Spool]


@pytest.fixture
async def open_spool(tmp_path: Path) -> AsyncIterator[Open]:
    """``open_spool(**options)`` → a started spool on ``tmp_path/spool``; stopped at the end."""
    spools: list[Spool] = []

    def start(**options: Any) -> Spool:
        spool = Spool(tmp_path / "spool", namespace=NS, pod=POD, **options)
        spool.open()
        spool.start(asyncio.get_running_loop())
        spools.append(spool)
        return spool

    yield start
    for s in spools:
        await asyncio.to_thread(s.stop)


async def test_appends_are_sealed_into_one_valid_chain(open_spool: Open, tmp_path: Path) -> None:
    spool = open_spool()
    for i in range(5):
        event = await spool.append(draft(i))
        assert event["sequence"] == i + 1
        audit.AuditEvent.model_validate(event)  # what the sidecar writes is schema-valid
    events = on_disk(tmp_path / "spool")
    assert [e["sequence"] for e in events] == [1, 2, 3, 4, 5]
    assert audit.verify_chain(events) == []
    assert events[0]["instance"].startswith(f"{NS}/{POD}/")
    assert events[0]["aiguard.input.hash"] == audit.content_hash([("user", "prompt 0")])
    assert (
        "prompt 0"
        not in (tmp_path / "spool")
        .joinpath(next(p.name for p in (tmp_path / "spool").glob(f"*{SEGMENT_SUFFIX}")))
        .read_text()
    )


async def test_concurrent_appends_share_fsyncs(open_spool: Open, tmp_path: Path) -> None:
    io = CountingIO()
    spool = open_spool(io=io)
    await asyncio.gather(*(spool.append(draft(i)) for i in range(500)))
    events = on_disk(tmp_path / "spool")
    assert len(events) == 500
    assert audit.verify_chain(events) == []
    assert io.fsyncs < 100, f"{io.fsyncs} fsyncs for 500 concurrent appends: no group commit"


async def test_restart_continues_the_chain_after_a_torn_last_line(
    open_spool: Open, tmp_path: Path
) -> None:
    spool = open_spool()
    for i in range(3):
        await spool.append(draft(i))
    await asyncio.to_thread(spool.stop)
    # The process died inside write(): half a line at the end of the active segment.
    segment = max((tmp_path / "spool").glob(f"*{SEGMENT_SUFFIX}"))
    with segment.open("ab") as f:
        f.write(b'{"aiguard.api":"chat.completions","gen_ai.request')
    restarted = open_spool()
    assert restarted.recovered_truncated > 0
    assert restarted.link.sequence == 3
    event = await restarted.append(draft(3))
    assert event["sequence"] == 4
    events = on_disk(tmp_path / "spool")
    assert [e["sequence"] for e in events] == [1, 2, 3, 4]
    assert audit.verify_chain(events) == []
    assert restarted.depth() == 4  # nothing was acknowledged: all of it is still to ship


async def test_writer_killed_mid_write_loses_nothing_that_was_acknowledged(
    open_spool: Open, tmp_path: Path
) -> None:
    """A write that got half its bytes out and then died (as a crash would), with the cut-back
    failing too: the requests of that batch were refused; after a restart every event that
    was acknowledged is there, the torn bytes are gone and the chain continues."""
    io = CountingIO()
    spool = open_spool(io=io)
    for i in range(3):
        await spool.append(draft(i))

    real_write = SpoolIO.write

    def half_then_die(fd: int, data: bytes) -> int:
        real_write(io, fd, data[: len(data) // 2])
        raise OSError(errno.EIO, "killed")

    io.write = half_then_die  # type: ignore[method-assign]
    io.fail = lambda op: OSError(errno.EIO, "still broken") if op == "truncate" else None
    with pytest.raises(SpoolUnavailable):
        await spool.append(draft(3))
    assert spool.link.sequence == 3  # no sequence was spent on the lost event
    await asyncio.to_thread(spool.stop)

    restarted = open_spool()
    assert restarted.link.sequence == 3
    await restarted.append(draft(4))
    events = on_disk(tmp_path / "spool")
    assert [e["sequence"] for e in events] == [1, 2, 3, 4]
    assert audit.verify_chain(events) == []


@pytest.mark.parametrize("failing", ["write", "fsync"])
async def test_disk_full_fails_the_batch_and_keeps_the_chain(
    open_spool: Open, tmp_path: Path, failing: str
) -> None:
    io = CountingIO()
    spool = open_spool(io=io)
    await spool.append(draft(0))
    io.fail = lambda op: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if op == failing else None
    with pytest.raises(SpoolUnavailable, match="No space left on device"):
        await spool.append(draft(1))
    assert spool.link.sequence == 1
    io.fail = lambda op: None  # space again
    event = await spool.append(draft(2))
    assert event["sequence"] == 2
    events = on_disk(tmp_path / "spool")
    assert [e["sequence"] for e in events] == [1, 2]
    assert audit.verify_chain(events) == []


async def test_a_failed_cut_back_moves_to_a_new_segment(open_spool: Open, tmp_path: Path) -> None:
    io = CountingIO()
    spool = open_spool(io=io)
    await spool.append(draft(0))
    io.fail = lambda op: OSError(errno.EIO, "I/O error") if op in ("fsync", "truncate") else None
    with pytest.raises(SpoolUnavailable):
        await spool.append(draft(1))
    io.fail = lambda op: None
    await spool.append(draft(2))
    await asyncio.to_thread(spool.stop)
    assert len(list((tmp_path / "spool").glob(f"*{SEGMENT_SUFFIX}"))) == 2
    restarted = open_spool()  # recovery cuts the unacknowledged line of the failed write
    events = on_disk(tmp_path / "spool")
    assert [e["sequence"] for e in events] == [1, 2]
    assert audit.verify_chain(events) == []
    assert restarted.link.sequence == 2


async def test_a_full_spool_refuses_appends(open_spool: Open) -> None:
    spool = open_spool(max_bytes=6000)
    results = [await _try(spool.append(draft(i))) for i in range(10)]
    refused = [r for r in results if isinstance(r, SpoolUnavailable)]
    assert refused
    assert "spool is full" in str(refused[0])
    assert 1 <= spool.link.sequence < 10


async def _try(coro: Any) -> Any:
    try:
        return await coro
    except SpoolUnavailable as e:
        return e


async def test_batches_acks_rotation_and_restart_from_the_cursor(
    open_spool: Open, tmp_path: Path
) -> None:
    spool = open_spool(segment_bytes=8000)
    for i in range(20):
        await spool.append(draft(i))
    directory = tmp_path / "spool"
    assert len(list(directory.glob(f"*{SEGMENT_SUFFIX}"))) > 2
    assert spool.depth() == 20
    assert spool.lag() > 0
    shipped: list[dict[str, Any]] = []
    while (batch := spool.read_batch(max_events=7, max_bytes=1 << 20)) is not None:
        shipped += [json.loads(x) for x in batch.lines]
        spool.ack(batch)
    assert [e["sequence"] for e in shipped] == list(range(1, 21))
    assert audit.verify_chain(shipped) == []
    assert spool.depth() == 0
    assert spool.lag() == 0
    assert len(list(directory.glob(f"*{SEGMENT_SUFFIX}"))) == 1  # only the active one is left
    await asyncio.to_thread(spool.stop)

    restarted = open_spool(segment_bytes=8000)  # delivered segments are deleted on restart
    assert restarted.link.sequence == 20
    assert restarted.depth() == 0
    assert list(directory.glob(f"*{SEGMENT_SUFFIX}")) == []
    event = await restarted.append(draft(20))
    assert (event["sequence"], event["prev_hash"]) == (21, shipped[-1]["hash"])


async def test_a_batch_resumes_mid_segment_after_a_restart(
    open_spool: Open, tmp_path: Path
) -> None:
    spool = open_spool()
    for i in range(10):
        await spool.append(draft(i))
    first = spool.read_batch(max_events=4, max_bytes=1 << 20)
    assert first is not None
    spool.ack(first)
    await asyncio.to_thread(spool.stop)
    restarted = open_spool()
    assert restarted.depth() == 6
    rest = restarted.read_batch(max_events=100, max_bytes=1 << 20)
    assert rest is not None
    assert [json.loads(x)["sequence"] for x in rest.lines] == [5, 6, 7, 8, 9, 10]


async def test_a_spool_of_another_pod_is_set_aside(open_spool: Open, tmp_path: Path) -> None:
    spool = open_spool()
    await spool.append(draft(0))
    await asyncio.to_thread(spool.stop)
    other = Spool(tmp_path / "spool", namespace=NS, pod="another-pod")
    other.open()
    assert other.link.sequence == 0
    assert other.instance.startswith(f"{NS}/another-pod/")
    assert list((tmp_path / "spool").glob("orphaned-*/*" + SEGMENT_SUFFIX))


async def test_memory_spool_chains_without_files(tmp_path: Path) -> None:
    lines: list[bytes] = []
    spool = Spool(None, namespace=NS, pod=POD, on_commit=lines.extend)
    spool.open()
    spool.start(asyncio.get_running_loop())
    try:
        for i in range(3):
            await spool.append(draft(i))
    finally:
        await asyncio.to_thread(spool.stop)
    assert audit.verify_chain([json.loads(x) for x in lines]) == []
    assert spool.depth() == 0


async def test_an_abandoned_new_segment_is_superseded_by_its_successor(
    open_spool: Open, tmp_path: Path
) -> None:
    """The failing write was the first of a new segment (rotation): its uncommitted line sits
    in NAME.jsonl, so the retry goes to NAME.1.jsonl, and the abandoned file (nothing
    committed in it) is removed."""
    io = CountingIO()
    spool = open_spool(io=io, segment_bytes=1)  # every append starts a new segment
    await spool.append(draft(0))
    io.fail = lambda op: OSError(errno.EIO, "I/O error") if op in ("fsync", "truncate") else None
    with pytest.raises(SpoolUnavailable):
        await spool.append(draft(1))
    io.fail = lambda op: None
    await spool.append(draft(2))
    await asyncio.to_thread(spool.stop)
    names = sorted(p.name for p in (tmp_path / "spool").glob(f"*{SEGMENT_SUFFIX}"))
    assert names == ["00000000000000000001.jsonl", "00000000000000000002.1.jsonl"]
    restarted = open_spool()
    events = on_disk(tmp_path / "spool")
    assert [e["sequence"] for e in events] == [1, 2]
    assert audit.verify_chain(events) == []
    assert restarted.link.sequence == 2
    assert events[1]["aiguard.request.start_time"] == audit.format_time(1e9 + 2)


async def test_restart_seals_in_flight_markers_and_drops_half_written_ones(
    open_spool: Open, tmp_path: Path
) -> None:
    """A process killed mid-stream leaves ``inflight/`` markers: a committed one becomes an
    ``interrupted`` event; one killed while being written (``.NAME.tmp``, not yet renamed) is
    no marker and is removed; an unreadable one is set aside, not silently dropped."""
    folder = tmp_path / "spool" / "inflight"
    folder.mkdir(parents=True)
    attrs = draft(7).attributes
    (folder / "a1.json").write_text(json.dumps({"attributes": attrs}))
    (folder / ".b2.json.tmp").write_bytes(b"")
    (folder / "c3.json").write_bytes(b'{"attributes": ')
    spool = open_spool()
    assert spool.recovered_interrupted == 1
    [event] = on_disk(tmp_path / "spool")
    assert event["aiguard.outcome"] == "interrupted"
    assert event["aiguard.request.id"] == attrs["aiguard.request.id"]
    assert list(folder.iterdir()) == []
    torn = [p.name for p in (tmp_path / "spool").glob("torn-*")]
    assert torn == ["torn-inflight-c3.json"]  # the half-written one is not reported as torn
    assert (tmp_path / "spool" / "torn-inflight-c3.json").read_bytes() == b'{"attributes": '
