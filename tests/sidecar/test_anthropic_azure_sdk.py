"""The official ``anthropic`` SDK (messages, async/sync/streaming) and the ``openai`` SDK's
``AzureOpenAI`` client through the sidecar, including routes that cross between the OpenAI and
Azure OpenAI dialects."""

from __future__ import annotations

import asyncio

import anthropic
import pytest

from aiguard_api.constants import PLACEHOLDER_KEY
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import (
    ANTHROPIC_KEY,
    AZURE_KEY,
    OPENAI_KEY,
    Sidecar,
)

MESSAGES = [{"role": "user", "content": "hello claude"}]


def assert_keys(upstream: ProviderStandIn, key: str) -> None:
    assert upstream.requests
    assert {r.api_key for r in upstream.requests} == {key}
    for r in upstream.requests:
        assert PLACEHOLDER_KEY not in str(dict(r.headers))


async def test_anthropic_messages_async(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    client = sidecar.anthropic()
    m = await client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        system="be brief",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert m.content[0].text == "echo: hello claude"  # type: ignore[union-attr]
    req = upstream.last_request
    assert req.path == "/v1/messages"
    assert req.headers["anthropic-version"]  # the SDK's own version, passed through
    assert req.texts == ("be brief", "hello claude")
    assert_keys(upstream, ANTHROPIC_KEY)
    rec = sidecar.sink.last
    assert (rec.wire, rec.route, rec.provider) == ("anthropic", "claude", "anthropic-main")
    assert (rec.input_tokens, rec.output_tokens) == (4, 3)
    assert rec.tls_version == "TLSv1.3"


async def test_anthropic_messages_sync(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    client = sidecar.anthropic_sync()

    def call() -> str:
        m = client.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES)  # type: ignore[arg-type]
        return m.content[0].text  # type: ignore[union-attr]

    assert await asyncio.to_thread(call) == "echo: hello claude"
    assert_keys(upstream, ANTHROPIC_KEY)


async def test_anthropic_stream_async_and_usage(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    client = sidecar.anthropic()
    async with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=MESSAGES,  # type: ignore[arg-type]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "echo: hello claude"
    assert final.usage.output_tokens == 3
    rec = sidecar.sink.last
    assert rec.stream
    assert (rec.input_tokens, rec.output_tokens) == (2, 3)
    assert rec.ttft_seconds is not None
    assert_keys(upstream, ANTHROPIC_KEY)


async def test_anthropic_stream_sync(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    client = sidecar.anthropic_sync()

    def call() -> str:
        with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=MESSAGES,  # type: ignore[arg-type]
        ) as stream:
            return "".join(stream.text_stream)

    assert await asyncio.to_thread(call) == "echo: hello claude"


async def test_anthropic_models_list(sidecar: Sidecar) -> None:
    page = await sidecar.anthropic().models.list()
    assert "claude-sonnet-4-5" in [m.id for m in page.data]


async def test_azure_client_to_azure_provider(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    client = sidecar.azure()
    r = await client.chat.completions.create(
        model="az-gpt-4o", messages=[{"role": "user", "content": "hello azure"}]
    )
    assert r.choices[0].message.content == "echo: hello azure"
    req = upstream.last_request
    # The route pins the deployment; the provider's apiVersion is used upstream.
    assert req.path == "/openai/deployments/gpt-4o/chat/completions"
    assert req.query == {"api-version": "2024-10-21"}
    assert_keys(upstream, AZURE_KEY)
    stream = await client.chat.completions.create(
        model="az-gpt-4o", messages=[{"role": "user", "content": "streamed"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: streamed"
    assert sidecar.sink.last.output_tokens == 2  # usage asked for upstream, hidden from client


async def test_azure_client_routed_to_an_openai_provider(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    client = sidecar.azure()
    r = await client.embeddings.create(model="text-embedding-3-small", input="one two")
    assert r.usage.prompt_tokens == 2
    req = upstream.last_request
    assert req.path == "/v1/embeddings"
    assert req.model == "text-embedding-3-small"
    assert_keys(upstream, OPENAI_KEY)


async def test_openai_client_routed_to_an_azure_provider(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    r = await sidecar.openai().chat.completions.create(
        model="az-gpt-4o", messages=[{"role": "user", "content": "cross"}]
    )
    assert r.choices[0].message.content == "echo: cross"
    assert upstream.last_request.path == "/openai/deployments/gpt-4o/chat/completions"
    assert_keys(upstream, AZURE_KEY)


async def test_anthropic_sdk_error_classes(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    client = sidecar.anthropic()
    with pytest.raises(anthropic.NotFoundError) as info:
        await client.messages.create(model="llama-3", max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 404
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "no route for model 'llama-3'" in info.value.message
    assert upstream.requests == []
