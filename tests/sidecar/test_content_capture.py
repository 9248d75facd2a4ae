"""Redacted content capture, end to end in one process: a real sidecar (``audit.contentCapture:
redacted``) driven by the openai SDK, shipping to the collector's HTTP app with a capture key.

Must show: the capture holds only what crossed the sidecar, with every entity masked even
where the policy let it through to the provider; a refused request captures nothing; the
collector keeps the capture encrypted (the database file never contains the text) and apart
from the hash-chained event, which still verifies; a reader gets it back through the API.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from aiguard_api import audit
from aiguard_operator.collector.capture import CaptureCipher
from aiguard_operator.collector.server import Deps, create_app, verify_stored
from aiguard_operator.collector.store import EventQuery, SQLiteStore
from aiguard_sidecar.app import Settings, SidecarServer
from aiguard_sidecar.audit.sink import AuditSettings
from aiguard_sidecar.guarding import engine_guardrails
from aiguard_sidecar.metrics import Metrics
from tests.harness.cluster import free_ports
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import WORKLOAD, HttpClients, SecretVolume, make_policy

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"


class CapturingCollector:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.store = SQLiteStore(db)
        self.cipher = CaptureCipher([os.urandom(32)])
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.runner: web.AppRunner | None = None

    async def lookup(self) -> dict[tuple[str, str], int]:
        return {}

    async def start(self) -> None:
        await self.store.open()
        app = create_app(Deps(self.store, None, False, self.lookup, capture=self.cipher))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.store.close()

    async def events(self) -> list[dict[str, Any]]:
        page = await self.store.events(EventQuery(order="sequence"))
        return [json.loads(b) for b in page.bodies]

    async def read_capture(self, event_id: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}/v1/captures/{event_id}", params={"namespace": "team-a"}) as r,
        ):
            return r.status, await r.json()


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[CapturingCollector]:
    c = CapturingCollector(tmp_path / "collector.db")
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def sidecar(
    tmp_path: Path,
    secrets: SecretVolume,
    upstream: ProviderStandIn,
    collector: CapturingCollector,
) -> AsyncIterator[SidecarServer]:
    policy = make_policy(
        upstream,
        audit={"contentCapture": "redacted"},
        guardrails={
            "input": {
                # The policy lets emails through to the provider, and blocks cards.
                "pii": {"entities": {"EMAIL_ADDRESS": "allow", "CREDIT_CARD": "block"}},
                "promptInjection": {"enabled": False},
            }
        },
    )
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    server = SidecarServer(
        Settings(
            policy_path=path,
            workload=WORKLOAD,
            listen_port=0,
            admin_host="127.0.0.1",
            admin_port=0,
            secrets_dir=str(secrets.root),
            drain_seconds=2.0,
            audit=AuditSettings(
                collector_url=collector.url,
                spool_dir=tmp_path / "spool",
                token_file=None,
                backoff_base=0.02,
                backoff_max=0.2,
                flush_seconds=1.0,
            ),
        ),
        metrics=Metrics(),
        guardrails=engine_guardrails,
    )
    await server.start()
    yield server
    await server.stop()


async def test_captures_are_masked_encrypted_and_apart_from_the_chain(
    sidecar: SidecarServer, collector: CapturingCollector, upstream: ProviderStandIn
) -> None:
    http = HttpClients.build()
    client = openai.AsyncOpenAI(
        base_url=f"{sidecar.url}/openai/v1",
        api_key="placeholder",
        max_retries=0,
        http_client=http.openai_async,
    )
    try:
        said = f"Email {EMAIL} about order 7"
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": said}]
        )
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Count to three."}], stream=True
        )
        async for _ in stream:
            pass
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"Charge {CARD}"}]
            )
    finally:
        await http.aclose()

    # The policy allowed the email upstream: the provider saw it as it was.
    assert EMAIL in upstream.requests[0].prompt_text

    events = await _three(collector)
    first, streamed, blocked = events
    assert all(audit.CAPTURE not in e for e in events), "stored events carry no content"
    info = await collector.store.chain(first[audit.INSTANCE])
    assert info is not None
    assert await verify_stored(collector.store, info) == []

    status, body = await collector.read_capture(first["id"])
    assert status == 200
    captured = body["capture"]
    assert captured["input"] == [["user", "Email <EMAIL_ADDRESS> about order 7"]]
    assert captured["output"] is not None
    assert EMAIL not in json.dumps(captured)
    assert captured["masked"]["EMAIL_ADDRESS"] >= 1
    assert first[audit.CAPTURE_HASH] == audit.capture_hash(captured)

    status, body = await collector.read_capture(streamed["id"])
    assert status == 200
    assert body["capture"]["output"], "the streamed reply the client received is captured"

    # Refused before anything went upstream: no capture at all.
    assert audit.CAPTURE_HASH not in blocked
    status, _ = await collector.read_capture(blocked["id"])
    assert status == 404

    # At rest the collector holds ciphertext only.
    raw = b"".join(p.read_bytes() for p in collector.db.parent.glob(collector.db.name + "*"))
    assert b"about order 7" not in raw
    assert b"<EMAIL_ADDRESS>" not in raw


async def _three(collector: CapturingCollector) -> list[dict[str, Any]]:
    """The three events, once the shipper has delivered them (polled, bounded)."""
    for _ in range(1500):
        events = await collector.events()
        if len(events) == 3:
            return events
        await asyncio.sleep(0.01)
    pytest.fail(f"expected 3 events at the collector, have {len(await collector.events())}")
