"""Every way the provider can misbehave, with nowhere to fail over: the client gets a clean error
in its own format (or an in-stream error event once the stream has started), exactly one audit
record describes what happened, and the sidecar serves the next request normally.

Failover to a second provider under the same faults is ``tests/sidecar/test_failover.py``;
this file is the single-provider table, one row per fault, streamed and not.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp
import pytest
import trustme

from tests.harness.standin import Fault, ProviderStandIn
from tests.sidecar.conftest import Sidecar, StartSidecar, make_policy, server_tls

QUESTION = "What is the capital of France?"
CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class Row:
    fault: Fault
    stream: bool
    status: int  # what the client's response starts with
    outcome: str  # the audit record's outcome
    in_stream_error: bool = False  # the stream started, then ended with an error event


ROWS = {
    "500": Row(Fault.http(500), False, 500, "upstream_error"),
    "503-stream": Row(Fault.http(503), True, 503, "upstream_error"),
    "429": Row(Fault.rate_limited(2), False, 429, "upstream_rate_limited"),
    "reset": Row(Fault.reset(), False, 502, "upstream_error"),
    "reset-stream": Row(Fault.reset(), True, 502, "upstream_error"),
    "slow-headers": Row(Fault.slow_headers(3.0), False, 504, "upstream_timeout"),
    "slow-headers-stream": Row(Fault.slow_headers(3.0), True, 504, "upstream_timeout"),
    "stalled-stream": Row(Fault.stall_stream(1, 3.0), True, 200, "upstream_stream_broken", True),
    "truncated-stream": Row(Fault.truncate_stream(2), True, 200, "upstream_stream_broken", True),
    "truncated-json": Row(Fault.truncate_stream(0), False, 502, "upstream_error"),
    "stalled-json": Row(Fault.stall_stream(0, 3.0), False, 504, "upstream_timeout"),
    "in-stream-error": Row(Fault.stream_error(1), True, 200, "upstream_stream_broken", True),
}


@pytest.fixture
async def single(start_sidecar: StartSidecar, upstream: ProviderStandIn) -> Sidecar:
    """One OpenAI provider, a short read timeout, one attempt (no retry on the same target)."""
    doc = make_policy(upstream)
    doc["spec"]["providers"][0]["timeouts"] = {"readSeconds": 0.5}
    doc["spec"]["resilience"] = {"maxAttempts": 1, "breakerFailureThreshold": 100}
    return await start_sidecar(doc)


async def post(sc: Sidecar, stream: bool) -> tuple[int, bytes, str]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": QUESTION}]}
    body["stream"] = stream
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sc.url}/openai/v1/chat/completions", json=body) as r,
    ):
        return r.status, await r.read(), r.headers.get("x-aiguard-request-id", "")


@pytest.mark.parametrize("name", list(ROWS))
async def test_each_upstream_fault_is_a_clean_error_and_one_audit_record(
    single: Sidecar, upstream: ProviderStandIn, name: str
) -> None:
    row = ROWS[name]
    upstream.fail_next(row.fault, path=CHAT)
    status, body, request_id = await post(single, row.stream)
    assert status == row.status, body
    if row.in_stream_error:
        assert body.rstrip().endswith(b"}"), "the stream ends with an error event, not [DONE]"
        assert b'"error"' in body.rsplit(b"data:", 1)[-1]
        assert b"[DONE]" not in body
    elif status >= 400:
        assert b'"error"' in body  # the OpenAI error envelope
    assert len(single.sink.records) == 1
    rec = single.sink.last
    assert rec.request_id == request_id
    assert rec.outcome == row.outcome, rec
    assert rec.stream is row.stream
    assert rec.provider in ("openai-main", None)
    # The sidecar is unharmed: the next request succeeds and is the second record.
    status, _, _ = await post(single, row.stream)
    assert status == 200
    assert [r.outcome for r in single.sink.records] == [row.outcome, "ok"]


async def test_tls12_only_provider_is_refused_and_the_refusal_is_audited(
    ca: trustme.CA, start_sidecar: StartSidecar
) -> None:
    """A downgrade offer (TLS 1.2 only) under the default minimum (1.3): nothing is sent, the
    client gets a 502, and the audit record says the attempt failed in the TLS handshake."""
    async with ProviderStandIn(
        ssl_context=server_tls(ca), tls_maximum_version=ssl.TLSVersion.TLSv1_2
    ) as old:
        doc = make_policy(old)
        doc["spec"]["resilience"] = {"maxAttempts": 1, "breakerFailureThreshold": 100}
        sc = await start_sidecar(doc)
        for stream in (False, True):
            status, body, _ = await post(sc, stream)
            assert status == 502
            assert b"TLS handshake" in body
        assert old.requests == []
        assert len(sc.sink.records) == 2
        for rec in sc.sink.records:
            assert rec.status == 502
            assert rec.outcome == "upstream_error"
            assert rec.tls_version is None  # nothing was negotiated
            assert [a.outcome for a in rec.attempts] == ["connect"]
            assert "TLS" in (rec.error or "")
