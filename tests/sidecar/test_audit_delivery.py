"""The audit path end to end, in one process: a real sidecar with its durable spool and
shipper, the official SDKs as clients, the provider stand-in upstream, and the collector's
HTTP app (SQLite) as the destination. Authentication is the cluster tests' business
(tests/integration/test_audit_pipeline.py); here the collector runs without it.

Must show: every decided request (allowed, denied, streamed, failed) becomes exactly one
event at the collector, in one verified chain; a collector outage and a lost acknowledgement
lose nothing and duplicate nothing; a restart continues the chain; a spool that cannot be
written refuses requests (closed, also mid-stream) or serves and counts them (open).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from aiguard_api import audit
from aiguard_operator.collector.server import Deps, create_app, verify_stored
from aiguard_operator.collector.store import EventQuery, SQLiteStore
from aiguard_sidecar.app import AUDIT, Settings, SidecarServer
from aiguard_sidecar.audit.sink import AuditService, AuditSettings
from aiguard_sidecar.audit.spool import SpoolIO
from aiguard_sidecar.metrics import Metrics
from tests.harness.cluster import free_ports
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import WORKLOAD, HttpClients, SecretVolume, make_policy, wait_for

HELLO: Any = [{"role": "user", "content": "hello"}]
GPT_ONLY = {
    "access": {
        "rules": [
            {
                "name": "gpt-only",
                "subjects": {"allAuthenticated": True},
                "models": ["gpt-4o"],
                "operations": ["chat", "models"],
            }
        ]
    }
}


class Collector:
    """The collector app on a fixed port; ``down()``/``up()`` simulate an outage, and
    ``lose_next_ack()`` stores a batch but answers 503, as a lost acknowledgement would."""

    def __init__(self, db: Path) -> None:
        self.store = SQLiteStore(db)
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.posts = 0
        self.acks_lost = 0
        self._lose = 0
        self._runner: web.AppRunner | None = None

    async def lookup(self) -> dict[tuple[str, str], int]:
        return {}

    async def up(self) -> None:
        @web.middleware
        async def lossy(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            response = await handler(request)
            if request.method == "POST":
                self.posts += 1
                if self._lose and response.status == 200:
                    self._lose -= 1
                    self.acks_lost += 1
                    return web.Response(status=503, text="ack lost")
            return response

        app = create_app(Deps(self.store, None, False, self.lookup))
        app.middlewares.append(lossy)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def lose_next_ack(self) -> None:
        self._lose += 1

    async def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = None
        while True:
            page = await self.store.events(EventQuery(order="sequence", after=after))
            out += [json.loads(b) for b in page.bodies]
            if page.next is None:
                return out
            after = page.next

    async def count(self) -> int:
        return len(await self.events())


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[Collector]:
    c = Collector(tmp_path / "collector.db")
    await c.store.open()
    await c.up()
    yield c
    await c.down()
    await c.store.close()


class FailingIO(SpoolIO):
    """A disk that is full while ``full`` is set."""

    def __init__(self) -> None:
        self.full = False

    def write(self, fd: int, data: bytes) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(fd, data)


@dataclass
class AuditedSidecar:
    server: SidecarServer
    metrics: Metrics
    http: HttpClients
    stopped: bool = False

    @property
    def service(self) -> AuditService:
        sink = self.server.app[AUDIT]
        assert isinstance(sink, AuditService)
        return sink

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.server.url}/openai/v1",
            api_key="placeholder",
            max_retries=0,
            http_client=self.http.openai_async,
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.http.aclose()
            await self.server.stop()


@dataclass
class Starter:
    tmp_path: Path
    secrets: SecretVolume
    started: list[AuditedSidecar] = field(default_factory=list)

    async def __call__(
        self, policy: dict[str, Any], *, collector: Collector | None, **audit_options: Any
    ) -> AuditedSidecar:
        path = self.tmp_path / "policy.json"
        path.write_text(json.dumps(policy))
        options: dict[str, Any] = {
            "collector_url": collector.url if collector else None,
            "spool_dir": self.tmp_path / "spool",
            "token_file": None,
            "backoff_base": 0.02,
            "backoff_max": 0.2,
            "flush_seconds": 1.0,
        }
        options.update(audit_options)
        metrics = Metrics()
        server = SidecarServer(
            Settings(
                policy_path=path,
                workload=WORKLOAD,
                listen_port=0,
                admin_host="127.0.0.1",
                admin_port=0,
                secrets_dir=str(self.secrets.root),
                drain_seconds=2.0,
                audit=AuditSettings(**options),
            ),
            metrics=metrics,
        )
        await server.start()
        sidecar = AuditedSidecar(server, metrics, HttpClients.build())
        self.started.append(sidecar)
        return sidecar


@pytest.fixture
async def start(tmp_path: Path, secrets: SecretVolume) -> AsyncIterator[Starter]:
    starter = Starter(tmp_path, secrets)
    yield starter
    for s in starter.started:
        await s.stop()


async def mixed_requests(sc: AuditedSidecar) -> int:
    """Allowed and denied, streamed and not, and a model no route serves. Returns how many."""
    client = sc.openai()
    await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    async for _ in stream:
        pass
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    return 5


async def test_every_request_becomes_exactly_one_event_in_one_verified_chain(
    start: Starter, collector: Collector, upstream: ProviderStandIn
) -> None:
    sc = await start(make_policy(upstream, **GPT_ONLY), collector=collector)
    n = await mixed_requests(sc)
    spool = sc.service.spool
    assert spool is not None
    await wait_for(lambda: spool.depth() == 0, what="delivery")
    events = await collector.events()
    assert len(events) == n
    assert audit.verify_chain(events) == []
    for e in events:
        audit.AuditEvent.model_validate(e)
    outcomes = [(e["aiguard.stream"], e["http.response.status_code"]) for e in events]
    assert outcomes == [(False, 200), (True, 200), (False, 403), (True, 403), (False, 200)]
    ok = events[1]
    assert ok["gen_ai.request.model"] == "gpt-4o"
    assert ok["gen_ai.provider.name"] == "openai"
    assert ok["gen_ai.usage.output_tokens"] is not None
    assert ok["tls.protocol.version"] == "1.3"
    assert ok["aiguard.output.hash"].startswith("sha256:")
    assert ok["aiguard.input.hash"] == audit.content_hash([("user", "hello")])
    denied = events[2]
    assert denied["aiguard.outcome"] == "access_denied"
    assert [d["allowed"] for d in denied["aiguard.decisions"]] == [False]
    assert "hello" not in json.dumps(events)  # hashes, never content
    assert sc.metric("aiguard_audit_events_total") == n
    assert sc.metric("aiguard_audit_spool_depth") == 0
    assert sc.metric("aiguard_audit_events_dropped_total") == 0
    info = await collector.store.chain(events[0]["instance"])
    assert info is not None
    assert await verify_stored(collector.store, info) == []


async def test_collector_outage_and_lost_acks_lose_nothing_and_duplicate_nothing(
    start: Starter, collector: Collector, upstream: ProviderStandIn
) -> None:
    sc = await start(make_policy(upstream, **GPT_ONLY), collector=collector)
    spool = sc.service.spool
    assert spool is not None
    total = await mixed_requests(sc)
    await wait_for(lambda: spool.depth() == 0, what="first delivery")

    await collector.down()
    total += await mixed_requests(sc)
    total += await mixed_requests(sc)
    assert spool.depth() == 10  # served, spooled, waiting
    await wait_for(
        lambda: sc.metric("aiguard_audit_delivery_failures_total", reason="connect") >= 2,
        what="failed deliveries to be counted",
    )
    assert sc.metric("aiguard_audit_spool_depth") == 10
    assert sc.metric("aiguard_audit_delivery_lag_seconds") > 0

    collector.lose_next_ack()  # the next batch is stored, but its acknowledgement is lost
    await collector.up()
    await wait_for(lambda: spool.depth() == 0, within=10, what="delivery after the outage")
    assert collector.acks_lost == 1
    events = await collector.events()
    assert len(events) == total  # exactly: none lost, the resent batch dropped as duplicates
    assert audit.verify_chain(events) == []
    assert sc.metric("aiguard_audit_events_dropped_total") == 0


async def test_a_restart_ships_what_was_spooled_and_continues_the_chain(
    start: Starter, collector: Collector, upstream: ProviderStandIn
) -> None:
    await collector.down()
    first = await start(make_policy(upstream, **GPT_ONLY), collector=collector, flush_seconds=0.1)
    n = await mixed_requests(first)
    await first.stop()  # the events wait in the spool

    await collector.up()
    second = await start(make_policy(upstream, **GPT_ONLY), collector=collector)
    n += await mixed_requests(second)
    spool = second.service.spool
    assert spool is not None
    await wait_for(lambda: spool.depth() == 0, within=10, what="delivery after the restart")
    events = await collector.events()
    assert [e["sequence"] for e in events] == list(range(1, n + 1))
    assert len({e["instance"] for e in events}) == 1  # one chain across the restart
    assert audit.verify_chain(events) == []


async def test_spool_failure_closed_refuses_requests_and_ends_streams_with_an_error(
    start: Starter, collector: Collector, upstream: ProviderStandIn
) -> None:
    io = FailingIO()
    policy = make_policy(upstream, **GPT_ONLY, audit={"onSpoolFailure": "closed"})
    sc = await start(policy, collector=collector, io=io)
    client = sc.openai()
    await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    io.full = True
    with pytest.raises(openai.InternalServerError) as refused:
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert refused.value.status_code == 503
    assert "onSpoolFailure is closed" in refused.value.message
    stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError, match="audit event could not be written"):
        async for _ in stream:
            pass
    assert sc.metric("aiguard_audit_spool_write_failures_total") >= 2
    assert sc.metric("aiguard_audit_events_dropped_total") == 0
    io.full = False
    await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    spool = sc.service.spool
    assert spool is not None
    await wait_for(lambda: spool.depth() == 0, what="delivery")
    events = await collector.events()
    assert audit.verify_chain(events) == []
    assert [e["http.response.status_code"] for e in events] == [200, 200]


async def test_spool_failure_open_serves_and_counts(
    start: Starter, collector: Collector, upstream: ProviderStandIn
) -> None:
    io = FailingIO()
    policy = make_policy(upstream, **GPT_ONLY, audit={"onSpoolFailure": "open"})
    sc = await start(policy, collector=collector, io=io)
    io.full = True
    reply = await sc.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content
    assert sc.metric("aiguard_audit_spool_write_failures_total") == 1
    assert sc.metric("aiguard_audit_events_dropped_total") == 1


async def test_stdout_sink_without_a_collector_writes_chained_json_lines(
    start: Starter, upstream: ProviderStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = make_policy(upstream, **GPT_ONLY, audit={"sinks": {"stdout": True}})
    sc = await start(policy, collector=None)
    n = await mixed_requests(sc)
    await sc.stop()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert len(lines) == n
    assert audit.verify_chain(lines) == []


async def test_collector_query_api_serves_pages_and_chains(
    start: Starter, collector: Collector, upstream: ProviderStandIn
) -> None:
    """The read side of the HTTP API (auth off here): pages, chains, verification."""
    sc = await start(make_policy(upstream, **GPT_ONLY), collector=collector)
    n = await mixed_requests(sc)
    spool = sc.service.spool
    assert spool is not None
    await wait_for(lambda: spool.depth() == 0, what="delivery")
    async with aiohttp.ClientSession() as http:
        got: list[dict[str, Any]] = []
        params = {"namespace": WORKLOAD.namespace, "limit": "2"}
        while True:
            async with http.get(f"{collector.url}/v1/events", params=params) as r:
                assert r.status == 200
                page = await r.json()
            got += page["events"]
            if not page["next"]:
                break
            params["after"] = page["next"]
        assert len(got) == n
        instance = got[0]["instance"]
        async with http.get(f"{collector.url}/v1/chains/{instance}") as r:
            chain_info = await r.json()
        assert chain_info["verification"] == {"ok": True, "problems": []}
        assert chain_info["head"]["sequence"] == n
        async with http.get(f"{collector.url}/v1/events", params={"from": "yesterday"}) as r:
            assert r.status == 400
        bad = {"events": [{"schema": audit.SCHEMA}]}
        async with http.post(f"{collector.url}/v1/events", json=bad) as r:
            assert r.status == 400
            assert "events[0]" in (await r.json())["error"]
