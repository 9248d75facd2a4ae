"""The audit spool under faults: a full spool volume (the size cap the injected emptyDir's
sizeLimit imposes) fails closed or open as the policy says and recovers once the collector
drains it; the in-flight journal that records streams interrupted by a crash survives torn
markers and a full spool without losing or inventing events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aiguard_api import audit
from aiguard_sidecar.audit.events import Draft
from aiguard_sidecar.audit.spool import INFLIGHT_DIR, SEGMENT_SUFFIX, Spool, SpoolUnavailable
from tests.harness.auditdata import attributes
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import make_policy, wait_for
from tests.sidecar.test_audit_delivery import AuditedSidecar, Collector, Starter

QUESTION = "What is the capital of France?"
NS, POD = "team-a", "chatbot-5d9c-abcde"
SPOOL_BYTES = 8000
"""Room for a few events (about 1.5 KB each): a full volume, without root or tmpfs."""


async def post(sc: AuditedSidecar) -> int:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": QUESTION}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sc.server.url}/openai/v1/chat/completions", json=body) as r,
    ):
        text = await r.text()
        if r.status != 200:
            assert r.status == 503, text
            assert "onSpoolFailure is closed" in text
        return r.status


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_a_full_spool_volume_follows_on_spool_failure_then_recovers(
    start: Starter, collector: Collector, upstream: ProviderStandIn, mode: str
) -> None:
    await collector.down()  # nothing is acknowledged: the spool only grows
    policy = make_policy(upstream, audit={"onSpoolFailure": mode})
    sc = await start(policy, collector=collector, max_bytes=SPOOL_BYTES)
    statuses: list[int] = []

    def full() -> bool:
        if mode == "open":
            return sc.metric("aiguard_audit_events_dropped_total") > 0
        return bool(statuses) and statuses[-1] == 503

    while len(statuses) < 30 and not full():
        statuses.append(await post(sc))
    assert full(), f"the spool never filled up: {statuses}"
    statuses += [await post(sc), await post(sc)]  # and it stays full
    dropped = int(sc.metric("aiguard_audit_events_dropped_total"))
    if mode == "closed":
        assert statuses[-3:] == [503, 503, 503]  # refused: every served request has its event
        assert dropped == 0
    else:
        assert set(statuses) == {200}  # served without evidence, and counted as such
        assert dropped == 3
    spooled = statuses.count(200) - dropped
    spool = sc.service.spool
    assert spool is not None
    assert spool.depth() == spooled

    await collector.up()  # the collector drains the spool: requests are served again
    await wait_count(collector, spooled)
    # The collector stores a batch before the shipper acknowledges it to the spool: until the
    # acknowledgement, the spool is still full (and the next event would be refused/dropped).
    await wait_for(lambda: spool.depth() == 0, within=10, what="the acknowledgement")
    assert await post(sc) == 200
    events = await wait_count(collector, spooled + 1)  # every event written, delivered once
    assert audit.verify_chain(events) == []


async def wait_count(collector: Collector, n: int) -> list[dict[str, Any]]:
    for _ in range(400):
        events = await collector.events()
        if len(events) >= n:
            assert len(events) == n
            return events
        await asyncio.sleep(0.025)
    pytest.fail(f"the collector holds {len(events)} events, not {n}")


# ── the in-flight journal (spool.py, "In flight") ────────────────────────────────────────────


def draft(n: int) -> Draft:
    attrs = attributes(
        namespace=NS, pod=POD, service_account="chatbot", policy="test-policy", start=1e9 + n
    )
    attrs["aiguard.request.id"] = f"req-{n}"
    attrs["aiguard.stream"] = True
    return Draft(attrs, inputs=[("user", f"prompt {n}")], outputs=[("output", "ok")], key=None)


def markers(directory: Path) -> list[Path]:
    folder = directory / INFLIGHT_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


def events_on_disk(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))
        for line in path.read_bytes().splitlines()
    ]


@pytest.fixture
async def spools(tmp_path: Path) -> AsyncIterator[list[Spool]]:
    started: list[Spool] = []
    yield started
    for s in started:
        await asyncio.to_thread(s.stop)


async def open_spool(directory: Path, started: list[Spool], **options: Any) -> Spool:
    spool = Spool(directory, namespace=NS, pod=POD, **options)
    await asyncio.to_thread(spool.open)
    spool.start(asyncio.get_running_loop())
    started.append(spool)
    return spool


async def test_a_stream_that_ends_leaves_no_marker_and_one_that_does_not_is_interrupted(
    tmp_path: Path, spools: list[Spool]
) -> None:
    directory = tmp_path / "spool"
    spool = await open_spool(directory, spools)
    spool.mark(draft(1))
    spool.mark(draft(2))
    await spool.append(draft(1))  # stream 1 ended; stream 2 is still running at the "crash"
    await wait_for(lambda: len(markers(directory)) == 1, what="the marker of stream 2")
    await asyncio.to_thread(spool.stop)
    spools.remove(spool)

    restarted = await open_spool(directory, spools)
    assert restarted.recovered_interrupted == 1
    assert markers(directory) == []
    events = events_on_disk(directory)
    assert [e["aiguard.request.id"] for e in events] == ["req-1", "req-2"]
    assert audit.verify_chain(events) == []
    assert events[1]["aiguard.outcome"] == "interrupted"
    assert events[1]["aiguard.input.hash"] == audit.content_hash([("user", "prompt 2")])
    assert events[1]["aiguard.input.chars"] == len("prompt 2")
    assert events[1]["aiguard.output.hash"] is None


async def test_a_torn_marker_is_set_aside_and_a_full_spool_keeps_markers_for_later(
    tmp_path: Path, spools: list[Spool]
) -> None:
    directory = tmp_path / "spool"
    spool = await open_spool(directory, spools)
    for n in range(3):
        spool.mark(draft(n))
    await wait_for(lambda: len(markers(directory)) == 3, what="markers")
    await asyncio.to_thread(spool.stop)
    spools.remove(spool)
    markers(directory)[0].write_bytes(b'{"attributes": {"aiguard.requ')  # the crash tore it

    with pytest.raises(SpoolUnavailable, match="spool is full"):
        await asyncio.to_thread(Spool(directory, namespace=NS, pod=POD, max_bytes=100).open)
    assert len(markers(directory)) == 2  # kept for the next start
    assert len(list(directory.glob("torn-inflight-*"))) == 1  # never shipped, kept to look at

    restarted = await open_spool(directory, spools)
    assert restarted.recovered_interrupted == 2
    assert restarted.link.sequence == 2
