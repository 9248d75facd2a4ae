"""The official ``openai`` SDK through the sidecar: chat, Responses, embeddings, models;
async, sync and streaming. The provider always sees the real key, never the placeholder."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from aiguard_api.constants import PLACEHOLDER_KEY
from aiguard_sidecar.pipeline import RelayResponse
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import OPENAI_KEY, Sidecar, StartSidecar, make_policy

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
]


def assert_real_key(upstream: ProviderStandIn) -> None:
    seen = [r.api_key for r in upstream.requests]
    assert seen, "the provider saw no request"
    assert set(seen) == {OPENAI_KEY}
    for r in upstream.requests:
        assert PLACEHOLDER_KEY not in str(dict(r.headers))


async def test_chat_completion_async(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    client = sidecar.openai()
    r = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "echo: hello there"
    assert r.usage is not None
    assert r.usage.prompt_tokens == 4
    assert upstream.last_request.path == "/v1/chat/completions"
    assert upstream.last_request.texts == ("be brief", "hello there")
    assert_real_key(upstream)
    rec = sidecar.sink.last
    assert (rec.status, rec.provider, rec.model_served) == (200, "openai-main", "gpt-4o")
    assert (rec.input_tokens, rec.output_tokens) == (4, 3)
    assert rec.system_fingerprint == "fp_standin"
    assert rec.tls_version == "TLSv1.3"
    assert rec.tls_cipher
    assert [a.outcome for a in rec.attempts] == ["ok"]


async def test_chat_completion_sync(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    client = sidecar.openai_sync()

    def call() -> str | None:
        r = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        return r.choices[0].message.content

    assert await asyncio.to_thread(call) == "echo: hello there"
    assert_real_key(upstream)


async def test_stream_without_usage_hides_the_usage_chunk_the_sidecar_asked_for(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    client = sidecar.openai()
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there"
    assert all(c.choices for c in chunks), "the client got a usage chunk it did not ask for"
    # Upstream, the sidecar asked for usage so it can account the tokens.
    assert upstream.last_request.body["stream_options"] == {"include_usage": True}
    rec = sidecar.sink.last
    assert (rec.input_tokens, rec.output_tokens) == (4, 3)
    assert rec.ttft_seconds is not None
    assert rec.ttft_seconds <= rec.latency_seconds
    assert_real_key(upstream)


async def test_stream_with_usage_keeps_the_usage_chunk(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    client = sidecar.openai()
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert upstream.last_request.raw_body == sidecar.sink.last.exchange.raw  # type: ignore[union-attr]


async def test_stream_sync(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    client = sidecar.openai_sync()

    def call() -> str:
        with client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,  # type: ignore[arg-type]
        ) as stream:
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert await asyncio.to_thread(call) == "echo: hello there"
    assert_real_key(upstream)


async def test_responses_api(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    client = sidecar.openai()
    r = await client.responses.create(model="gpt-4o", instructions="be brief", input="hi there")
    assert r.output_text == "echo: hi there"
    rec = sidecar.sink.last
    assert rec.api == "responses"
    assert rec.operation == "responses"
    assert (rec.input_tokens, rec.output_tokens) == (4, 3)
    async with client.responses.stream(model="gpt-4o", input="streamed words") as stream:
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
    assert text == "echo: streamed words"
    assert (sidecar.sink.last.input_tokens, sidecar.sink.last.output_tokens) == (2, 3)
    assert "stream_options" not in upstream.last_request.body
    assert_real_key(upstream)


async def test_embeddings(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    client = sidecar.openai()
    r = await client.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])
    assert len(r.data) == 2
    assert r.usage.prompt_tokens == 3
    rec = sidecar.sink.last
    assert (rec.operation, rec.route, rec.input_tokens) == ("embeddings", "embeddings", 3)
    assert rec.model_served == "text-embedding-3-small"
    assert_real_key(upstream)


async def test_model_list_is_the_routed_models_and_retrieve_goes_upstream(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    client = sidecar.openai()
    ids = [m.id async for m in client.models.list()]
    assert ids == [
        "gpt-4o",
        "gpt-4o-mini",
        "text-embedding-3-small",
        "claude-sonnet-4-5",
        "az-gpt-4o",
    ]
    assert upstream.requests == []  # answered from the policy
    model = await client.models.retrieve("gpt-4o")
    assert model.id == "gpt-4o"
    assert upstream.last_request.path == "/v1/models/gpt-4o"
    assert_real_key(upstream)


async def test_route_target_model_pins_the_upstream_model(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    doc = make_policy(upstream)
    doc["spec"]["routes"].insert(
        0,
        {
            "name": "alias",
            "models": ["smart"],
            "targets": [{"provider": "openai-main", "model": "gpt-4o-2024-08-06"}],
        },
    )
    sc = await start_sidecar(doc)
    r = await sc.openai().chat.completions.create(model="smart", messages=MESSAGES)  # type: ignore[arg-type]
    assert upstream.last_request.model == "gpt-4o-2024-08-06"
    assert r.model == "gpt-4o-2024-08-06"
    rec = sc.sink.last
    assert (rec.model_requested, rec.model_target, rec.model_served) == (
        "smart",
        "gpt-4o-2024-08-06",
        "gpt-4o-2024-08-06",
    )


async def test_a_relayed_stream_sends_its_headers_with_its_first_bytes() -> None:
    # The status line and headers leave with the first event (one TCP segment, one wake-up
    # of the client before its first token), not in a write of their own at prepare().
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        out = RelayResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await release.wait()
        await out.write(b"data: {}\n\n")
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        with pytest.raises(TimeoutError):  # prepared, nothing written: nothing on the wire
            await asyncio.wait_for(reader.read(1), 0.2)
        release.set()
        first = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        release.set()
        writer.close()
        await writer.wait_closed()
        await runner.cleanup()
    head, _, rest = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"data: {}" in rest, f"the first read held only the headers: {first!r}"


async def test_a_stream_relayed_whole_through_a_raw_socket(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "stream": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.server.port)
    try:
        writer.write(
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            + f"Authorization: Bearer {PLACEHOLDER_KEY}\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, events = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"text/event-stream" in head.lower()
    assert b"chunked" in head.lower()
    assert events.count(b"data: {") >= 3
    assert events.rstrip().endswith(b"0")  # the last chunk of the chunked body
    assert b"data: [DONE]" in events
