"""The OTLP copy of the audit trail from a real sidecar (``audit.sinks.otlpEndpoint``) to a
receiver that parses OTLP/JSON with the official protobuf definitions.

Must show: every decided request arrives as one log record whose body is the event's line (the
chain verifies downstream), captured content never leaves in a copy, and the exported count is
a metric.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from aiguard_api import audit
from aiguard_sidecar.app import Settings, SidecarServer
from aiguard_sidecar.audit import otlp
from aiguard_sidecar.audit.sink import AuditSettings
from aiguard_sidecar.guarding import engine_guardrails
from aiguard_sidecar.metrics import Metrics
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import WORKLOAD, HttpClients, SecretVolume, make_policy, wait_for


class Receiver:
    def __init__(self) -> None:
        self.records: list[Any] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        message = ExportLogsServiceRequest()
        json_format.Parse(await request.read(), message, ignore_unknown_fields=False)
        for rl in message.resource_logs:
            for sl in rl.scope_logs:
                self.records.extend(sl.log_records)
        return web.json_response({})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post(otlp.LOGS_PATH, rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}"
    yield rec
    await runner.cleanup()


async def test_every_event_is_copied_as_an_otlp_log_record_without_content(
    tmp_path: Path, secrets: SecretVolume, upstream: ProviderStandIn, receiver: Receiver
) -> None:
    policy = make_policy(
        upstream,
        audit={"contentCapture": "redacted", "sinks": {"otlpEndpoint": receiver.url}},
        guardrails={"input": {"promptInjection": {"enabled": False}}},
    )
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    metrics = Metrics()
    server = SidecarServer(
        Settings(
            policy_path=path,
            workload=WORKLOAD,
            listen_port=0,
            admin_host="127.0.0.1",
            admin_port=0,
            secrets_dir=str(secrets.root),
            drain_seconds=2.0,
            audit=AuditSettings(collector_url=None, spool_dir=tmp_path / "spool", token_file=None),
        ),
        metrics=metrics,
        guardrails=engine_guardrails,
    )
    await server.start()
    http = HttpClients.build()
    try:
        client = openai.AsyncOpenAI(
            base_url=f"{server.url}/openai/v1",
            api_key="placeholder",
            max_retries=0,
            http_client=http.openai_async,
        )
        for text in ("Summarise the release notes.", "Write to jane.doe@example.com"):
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": text}]
            )
        with pytest.raises(openai.NotFoundError):  # refused too: still one event
            await client.chat.completions.create(
                model="not-routed-model", messages=[{"role": "user", "content": "hi"}]
            )
        await wait_for(lambda: len(receiver.records) >= 3, what="3 OTLP log records")
    finally:
        await http.aclose()
        await server.stop()

    assert len(receiver.records) == 3
    events = [json.loads(r.body.string_value) for r in receiver.records]
    assert audit.verify_chain(events) == []
    assert [e["http.response.status_code"] for e in events][:2] == [200, 200]
    # The capture stays at the collector (none here): a copy carries only its hash.
    assert all(audit.CAPTURE not in e for e in events)
    assert audit.CAPTURE_HASH in events[0]
    assert not any("jane.doe" in r.body.string_value for r in receiver.records)
    assert metrics.registry.get_sample_value("aiguard_audit_otlp_exported_total") == 3
