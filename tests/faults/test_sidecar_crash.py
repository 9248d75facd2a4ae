"""The sidecar killed mid-stream (SIGKILL: no drain, no flush) loses no audit event: the stream
in flight is recorded as ``interrupted`` when the sidecar starts again on the same spool, in
the same hash chain, and every completed request's event is delivered exactly once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from aiguard_api import audit
from tests.faults.conftest import SidecarProcess
from tests.harness.standin import Fault, ProviderStandIn
from tests.sidecar.conftest import SecretVolume, make_policy, wait_for
from tests.sidecar.test_audit_delivery import Collector

QUESTION = "What is the capital of France?"
HELLO: Any = [{"role": "user", "content": QUESTION}]


async def wait_events(collector: Collector, n: int, within: float = 20.0) -> list[dict[str, Any]]:
    """The collector's events once it holds ``n`` (fails after ``within`` seconds)."""
    deadline = time.monotonic() + within
    while len(events := await collector.events()) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"the collector holds {len(events)} events, not {n}")
        await asyncio.sleep(0.05)
    return events


async def chat(http: aiohttp.ClientSession, sc: SidecarProcess, *, stream: bool) -> str:
    """One complete request; returns its request id."""
    body = {"model": "gpt-4o", "messages": HELLO, "stream": stream}
    async with http.post(f"{sc.url}/openai/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        await r.read()
        return r.headers["x-aiguard-request-id"]


async def test_sigkill_mid_stream_records_the_stream_as_interrupted_after_restart(
    tmp_path: Any,
    secrets: SecretVolume,
    upstream: ProviderStandIn,
    collector: Collector,
    sidecar_process: list[SidecarProcess],
) -> None:
    sc = SidecarProcess(tmp_path, make_policy(upstream), secrets)
    sidecar_process.append(sc)
    await sc.start(collector.url)
    async with aiohttp.ClientSession() as http:
        done = [await chat(http, sc, stream=False), await chat(http, sc, stream=True)]
        await wait_for(lambda: collector.posts >= 1, within=10, what="first delivery")

        # A stream that reaches the client, then stalls upstream: the sidecar dies mid-way.
        upstream.fail_next(Fault.stall_stream(after_chunks=1, seconds=5))
        body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
        async with http.post(f"{sc.url}/openai/v1/chat/completions", json=body) as r:
            assert r.status == 200
            interrupted_id = r.headers["x-aiguard-request-id"]
            first = await r.content.readuntil(b"\n\n")
            assert b"echo" in first or b"role" in first
            await wait_for(lambda: len(sc.inflight_markers()) == 1, what="the in-flight marker")
            await sc.kill()
        marker = json.loads(sc.inflight_markers()[0].read_text())
        assert "France" not in json.dumps(marker)  # metadata and hashes only, never content

        # Same spool, new process: the marker becomes an event before anything else.
        await sc.start(collector.url)
        after = await chat(http, sc, stream=False)

    events = await wait_events(collector, 4)
    ids = [e["aiguard.request.id"] for e in events]
    assert ids == [*done, interrupted_id, after]  # none lost, none twice, in order
    assert audit.verify_chain(events) == []
    assert len({e["instance"] for e in events}) == 1  # one chain across the crash
    gone = events[2]
    assert gone["aiguard.outcome"] == "interrupted"
    assert gone["error.type"] == "interrupted"
    assert gone["aiguard.stream"] is True
    assert gone["http.response.status_code"] == 200
    assert gone["aiguard.provider"] == "openai-main"
    assert gone["tls.protocol.version"] == "1.3"
    assert gone["aiguard.input.hash"] == audit.content_hash([("user", QUESTION)])
    assert gone["aiguard.output.hash"] is None
    audit.AuditEvent.model_validate(gone)
    assert [e["aiguard.outcome"] for e in events if e is not gone] == ["ok", "ok", "ok"]


async def test_sigkill_while_the_provider_generates_a_json_answer_records_it_as_interrupted(
    tmp_path: Any,
    secrets: SecretVolume,
    upstream: ProviderStandIn,
    collector: Collector,
    sidecar_process: list[SidecarProcess],
) -> None:
    """A non-streamed request still waiting for its provider after a second is journaled in
    flight too (pipeline.JOURNAL_AFTER_SECONDS): killed then, it is not lost either."""
    sc = SidecarProcess(tmp_path, make_policy(upstream), secrets)
    sidecar_process.append(sc)
    await sc.start(collector.url)
    async with aiohttp.ClientSession() as http:
        done = await chat(http, sc, stream=False)
        assert sc.inflight_markers() == []  # a quick request writes no marker
        upstream.fail_next(Fault.slow_headers(30))  # the provider takes its time
        body = {"model": "gpt-4o", "messages": HELLO}
        waiting = asyncio.create_task(http.post(f"{sc.url}/openai/v1/chat/completions", json=body))
        await wait_for(lambda: len(sc.inflight_markers()) == 1, what="the in-flight marker")
        await sc.kill()
        with pytest.raises(aiohttp.ClientError):
            await waiting
        await sc.start(collector.url)
        after = await chat(http, sc, stream=False)

    events = await wait_events(collector, 3)
    assert audit.verify_chain(events) == []
    assert [e["aiguard.request.id"] for e in events][0::2] == [done, after]
    gone = events[1]
    assert gone["aiguard.outcome"] == "interrupted"
    assert gone["aiguard.stream"] is False
    assert gone["aiguard.input.hash"] == audit.content_hash([("user", QUESTION)])
    audit.AuditEvent.model_validate(gone)
