"""The OTLP copy of audit events: the wire format checked against the official OpenTelemetry
protobuf definitions, and delivery to a real HTTP receiver that fails on demand."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from aiguard_api import audit
from aiguard_sidecar.audit import otlp
from tests.harness.auditdata import chain
from tests.sidecar.conftest import wait_for


def lines(n: int, **kwargs: Any) -> list[bytes]:
    return [
        audit.hash_and_line({k: v for k, v in e.items() if k != audit.HASH})[1]
        for e in chain(n, **kwargs)
    ]


def parse(body: bytes | str) -> ExportLogsServiceRequest:
    """Strict: an unknown field or a wrongly typed value is an error."""
    message = ExportLogsServiceRequest()
    json_format.Parse(body, message, ignore_unknown_fields=False)
    return message


def test_the_export_is_a_valid_otlp_logs_request_carrying_each_line_verbatim() -> None:
    sent = lines(3)
    request = parse(json.dumps(otlp.export_request(sent)))
    (resource,) = request.resource_logs
    resource_attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert resource_attrs["k8s.namespace.name"] == "team-a"
    assert resource_attrs["service.name"] == "aiguard-sidecar"
    assert resource_attrs["service.instance.id"] == json.loads(sent[0])["instance"]
    (scope,) = resource.scope_logs
    assert scope.scope.name == "aiguard.audit"
    assert [r.body.string_value.encode() + b"\n" for r in scope.log_records] == sent


def test_each_record_keeps_the_events_time_and_typed_attributes() -> None:
    (line,) = lines(1)
    event = json.loads(line)
    record = (
        parse(json.dumps(otlp.export_request([line]))).resource_logs[0].scope_logs[0].log_records[0]
    )
    assert record.time_unix_nano == round(audit.parse_time(event["time"]) * 1e6) * 1000
    assert record.event_name == "aiguard.audit"
    attrs = {a.key: a.value for a in record.attributes}
    assert attrs["sequence"].int_value == event["sequence"]
    assert attrs["aiguard.stream"].bool_value is event["aiguard.stream"]
    assert attrs["hash"].string_value == event["hash"]
    decisions = attrs["aiguard.decisions"].array_value.values
    assert len(decisions) == len(event["aiguard.decisions"])
    # OTLP has no null: absent values are left out rather than sent as empty strings.
    assert all(event[k] is not None for k in attrs)


def test_the_body_still_verifies_as_a_hash_chain() -> None:
    sent = lines(5)
    records = (
        parse(json.dumps(otlp.export_request(sent))).resource_logs[0].scope_logs[0].log_records
    )
    received = [json.loads(r.body.string_value) for r in records]
    assert audit.verify_chain(received) == []


def test_refused_requests_are_warnings() -> None:
    (line,) = lines(1)
    event = json.loads(line)
    event.pop(audit.HASH)
    event["aiguard.outcome"] = "access_denied"
    _, refused = audit.hash_and_line(event)
    record = otlp.export_request([refused])["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert record["severityText"] == "WARN"


# --------------------------------------------------------------------------- delivery


@dataclass
class Receiver:
    """An OTLP/HTTP logs endpoint on 127.0.0.1 that answers ``failures`` first."""

    failures: list[int] = field(default_factory=list)
    retry_after: str | None = None
    bodies: list[ExportLogsServiceRequest] = field(default_factory=list)
    attempts: int = 0
    url: str = ""

    @property
    def records(self) -> list[str]:
        return [
            r.body.string_value
            for b in self.bodies
            for rl in b.resource_logs
            for sl in rl.scope_logs
            for r in sl.log_records
        ]

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        assert request.content_type == "application/json"
        if self.failures:
            status = self.failures.pop(0)
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response({"code": status}, status=status, headers=headers)
        self.bodies.append(parse(await request.read()))
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


def exporter(url: str, **kwargs: Any) -> otlp.OtlpExporter:
    defaults: dict[str, Any] = {"flush_seconds": 0.05, "backoff_base": 0.01, "backoff_max": 0.05}
    return otlp.OtlpExporter(url, **{**defaults, **kwargs})


async def test_every_event_arrives_once_in_order_in_bounded_batches(receiver: Receiver) -> None:
    exp = exporter(receiver.url, max_batch=7)
    exp.start()
    sent = lines(30)
    for i in range(0, 30, 4):
        exp.put(sent[i : i + 4])
    await wait_for(lambda: exp.exported == 30, within=10, what="exp.exported == 30")
    await exp.close()
    assert [r.encode() + b"\n" for r in receiver.records] == sent
    assert all(len(b.resource_logs[0].scope_logs[0].log_records) <= 7 for b in receiver.bodies)
    assert exp.dropped == 0


async def test_unavailable_and_throttled_endpoints_are_retried_without_duplicates(
    receiver: Receiver,
) -> None:
    receiver.failures = [503, 429, 502]
    exp = exporter(receiver.url)
    exp.start()
    sent = lines(5)
    exp.put(sent)
    await wait_for(lambda: exp.exported == 5, within=10, what="exp.exported == 5")
    await exp.close()
    assert receiver.attempts == 4
    assert [r.encode() + b"\n" for r in receiver.records] == sent
    assert exp.dropped == 0


async def test_a_batch_refused_for_good_is_dropped_and_counted(receiver: Receiver) -> None:
    receiver.failures = [400]
    dropped: list[int] = []
    exp = exporter(receiver.url, on_dropped=dropped.append)
    exp.start()
    exp.put(lines(3))
    await wait_for(lambda: exp.dropped == 3, within=10, what="exp.dropped == 3")
    exp.put(lines(2, first=4))
    await wait_for(lambda: exp.exported == 2, within=10, what="exp.exported == 2")
    await exp.close()
    assert sum(dropped) == 3
    assert len(receiver.records) == 2


async def test_an_unreachable_endpoint_never_holds_more_than_the_queue(receiver: Receiver) -> None:
    exp = exporter("http://127.0.0.1:9", max_queue=10, max_batch=4)  # nothing listens on 9
    exp.start()
    exp.put(lines(25))
    await wait_for(lambda: exp.dropped >= 11, within=10, what="exp.dropped >= 11")
    assert exp.pending() <= 10 + 4
    await exp.close(flush_seconds=0.1)
    assert exp.exported == 0
    assert exp.dropped == 25  # every event is accounted for: dropped at overflow or at close


def test_only_http_endpoints_are_accepted() -> None:
    with pytest.raises(ValueError, match="not http"):
        otlp.OtlpExporter("file:///etc/passwd")
