"""Endpoints beyond generation, through the official SDKs: Anthropic token counting, OpenAI
Responses retrieve/delete (with the rule that decides who may reach a stored response), and
Azure OpenAI's v1 GA path form (``.../openai/v1/``)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from aiguard_api.constants import PLACEHOLDER_KEY
from aiguard_sidecar.app import STORE
from tests.harness.standin import Fault, ProviderStandIn
from tests.sidecar.conftest import (
    ANTHROPIC_KEY,
    AZURE_KEY,
    OPENAI_KEY,
    Sidecar,
    StartSidecar,
    make_policy,
    wait_for,
)

HELLO: Any = [{"role": "user", "content": "hello there friend"}]


def _only_key(upstream: ProviderStandIn, path: str, key: str) -> None:
    seen = upstream.requests_to(path)
    assert seen, f"nothing reached {path}"
    assert {r.api_key for r in seen} == {key}
    for r in seen:
        assert PLACEHOLDER_KEY not in str(dict(r.headers))


# ── Anthropic: POST /v1/messages/count_tokens ────────────────────────────────────────────────


async def test_count_tokens_async_reaches_the_provider_with_the_real_key(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    counted = await sidecar.anthropic().messages.count_tokens(
        model="claude-sonnet-4-5", system="be brief", messages=HELLO
    )
    assert counted.input_tokens == 5  # the stand-in counts words: 2 (system) + 3 (message)
    req = upstream.last_request
    assert (req.method, req.path) == ("POST", "/v1/messages/count_tokens")
    assert req.texts == ("be brief", "hello there friend")
    _only_key(upstream, "/v1/messages/count_tokens", ANTHROPIC_KEY)
    rec = sidecar.sink.last
    assert (rec.api, rec.operation, rec.route, rec.provider) == (
        "messages.count_tokens",
        "chat",
        "claude",
        "anthropic-main",
    )
    assert (rec.status, rec.outcome) == (200, "ok")
    assert rec.input_tokens is None  # a count is not usage


async def test_count_tokens_sync(sidecar: Sidecar) -> None:
    client = sidecar.anthropic_sync()

    def call() -> int:
        return int(
            client.messages.count_tokens(model="claude-sonnet-4-5", messages=HELLO).input_tokens
        )

    assert await asyncio.to_thread(call) == 3


async def test_count_tokens_obeys_the_access_rules(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    rules = [
        {
            "name": "gpt-only",
            "subjects": {"allAuthenticated": True},
            "models": ["gpt-*"],
            "operations": ["chat"],
        }
    ]
    sc = await start_sidecar(make_policy(upstream, access={"rules": rules}))
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        await sc.anthropic().messages.count_tokens(model="claude-sonnet-4-5", messages=HELLO)
    assert "test-policy" in str(info.value)
    assert upstream.requests_to("/v1/messages/count_tokens") == []


# ── OpenAI Responses: GET / DELETE /v1/responses/{id} ────────────────────────────────────────


async def test_a_response_created_through_the_sidecar_can_be_retrieved_and_deleted(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    client = sidecar.openai()
    created = await client.responses.create(model="gpt-4o", input="remember me")
    got = await client.responses.retrieve(created.id)
    assert got.id == created.id
    assert got.output_text == "echo: remember me"
    _only_key(upstream, f"/v1/responses/{created.id}", OPENAI_KEY)
    rec = sidecar.sink.last
    assert (rec.api, rec.operation, rec.model_requested, rec.provider) == (
        "responses.retrieve",
        "responses",
        "gpt-4o",
        "openai-main",
    )
    assert (rec.input_tokens, rec.output_tokens) == (None, None)  # usage was counted at create

    await client.responses.delete(created.id)  # the SDK returns nothing on success
    assert upstream.last_request.method == "DELETE"
    assert created.id not in upstream.stored_responses
    assert sidecar.sink.last.api == "responses.delete"
    # Deleted: the sidecar forgets the id and answers itself.
    before = len(upstream.requests)
    with pytest.raises(openai.NotFoundError) as info:
        await client.responses.retrieve(created.id)
    assert info.value.body["code"] == "response_not_found"  # type: ignore[index]
    assert len(upstream.requests) == before


async def test_a_streamed_response_can_be_retrieved(sidecar: Sidecar) -> None:
    client = sidecar.openai()
    async with client.responses.stream(model="gpt-4o", input="streamed one") as stream:
        final = await stream.get_final_response()
    got = await client.responses.retrieve(final.id)
    assert got.output_text == "echo: streamed one"


async def test_an_unknown_response_id_is_refused_without_contacting_a_provider(
    sidecar: Sidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> None:
    client = sidecar.openai()
    created = await client.responses.create(model="gpt-4o", input="made upstream")
    not_ours = "resp_not_created_here"
    upstream.stored_responses[not_ours] = upstream.stored_responses[created.id]
    upstream.clear_requests()
    with pytest.raises(openai.NotFoundError) as info:
        await client.responses.retrieve(not_ours)
    assert "not created through this sidecar" in info.value.message
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(not_ours)
    assert upstream.requests == []
    assert backup.requests == []
    assert sidecar.sink.last.status == 404
    assert not_ours in upstream.stored_responses


async def test_a_response_created_with_store_false_is_not_remembered(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    client = sidecar.openai()
    created = await client.responses.create(model="gpt-4o", input="ephemeral", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)
    assert upstream.requests_to(f"/v1/responses/{created.id}") == []


async def test_retrieval_needs_the_responses_operation_on_the_model_now(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    doc = make_policy(upstream)
    sc = await start_sidecar(doc)
    client = sc.openai()
    created = await client.responses.create(model="gpt-4o", input="then revoked")
    revoked = copy.deepcopy(doc)
    revoked["spec"]["access"]["rules"][0]["operations"] = ["chat"]
    old = sc.server.app[STORE].current.hash
    sc.write_policy(revoked)
    await wait_for(lambda: sc.server.app[STORE].current.hash != old, what="the reload")
    upstream.clear_requests()
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.responses.retrieve(created.id)
    assert info.value.body["code"] == "access_denied"  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError):
        await client.responses.delete(created.id)
    assert upstream.requests == []
    assert sc.sink.last.model_requested == "gpt-4o"


async def test_a_stored_response_is_served_only_to_the_user_who_created_it(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    access = {
        "identity": {"trustedHeader": {}, "requireUser": True},
        "rules": [
            {
                "name": "people",
                "subjects": {"users": ["alice", "bob"]},
                "models": ["gpt-*"],
                "operations": ["responses"],
            }
        ],
    }
    sc = await start_sidecar(make_policy(upstream, access=access))
    alice = sc.openai(default_headers={"x-aiguard-user": "alice"})
    bob = sc.openai(default_headers={"x-aiguard-user": "bob"})
    created = await alice.responses.create(model="gpt-4o", input="alice's secret")
    upstream.clear_requests()
    with pytest.raises(openai.PermissionDeniedError) as info:
        await bob.responses.retrieve(created.id)
    assert "another user" in info.value.message
    assert upstream.requests == []
    assert (await alice.responses.retrieve(created.id)).output_text == "echo: alice's secret"


async def test_other_methods_on_a_response_path_are_405(sidecar: Sidecar) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.put(f"{sidecar.url}/openai/v1/responses/resp_x", data=b"{}") as r,
    ):
        assert r.status == 405
        assert json.loads(await r.read())["error"]["code"] == "method_not_allowed"


# ── Azure OpenAI v1 GA: .../openai/v1/ ───────────────────────────────────────────────────────


def _azure_v1(sc: Sidecar) -> openai.AsyncOpenAI:
    """What Microsoft documents for the v1 API: the plain OpenAI client on ``/openai/v1/``."""
    return openai.AsyncOpenAI(
        base_url=f"{sc.url}/azure/openai/v1/",
        api_key=PLACEHOLDER_KEY,
        max_retries=0,
        http_client=sc.http.openai_async,
    )


async def test_azure_v1_chat_with_the_openai_client(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    r = await _azure_v1(sidecar).chat.completions.create(
        model="az-gpt-4o", messages=[{"role": "user", "content": "hello v1"}]
    )
    assert r.choices[0].message.content == "echo: hello v1"
    req = upstream.last_request
    assert req.path == "/openai/deployments/gpt-4o/chat/completions"  # the route pins it
    _only_key(upstream, "/openai/deployments/*", AZURE_KEY)
    rec = sidecar.sink.last
    assert (rec.path, rec.route, rec.provider) == (
        "/azure/openai/v1/chat/completions",
        "azure",
        "azure-main",
    )
    stream = await _azure_v1(sidecar).chat.completions.create(
        model="az-gpt-4o", messages=[{"role": "user", "content": "streamed v1"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: streamed v1"


async def test_azure_v1_with_the_azure_client(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    """``AzureOpenAI`` given the v1 ``base_url`` still puts the deployment in the path."""
    client = openai.AsyncAzureOpenAI(
        base_url=f"{sidecar.url}/azure/openai/v1/",
        api_key=PLACEHOLDER_KEY,
        api_version="2024-10-21",
        max_retries=0,
        http_client=sidecar.http.openai_async,
    )
    r = await client.chat.completions.create(
        model="az-gpt-4o", messages=[{"role": "user", "content": "hello azure v1"}]
    )
    assert r.choices[0].message.content == "echo: hello azure v1"
    assert sidecar.sink.last.path == "/azure/openai/v1/deployments/az-gpt-4o/chat/completions"
    _only_key(upstream, "/openai/deployments/*", AZURE_KEY)


async def test_azure_v1_responses_create_retrieve_delete_and_models(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    client = _azure_v1(sidecar)
    created = await client.responses.create(model="az-gpt-4o", input="kept in azure")
    assert upstream.last_request.path == "/openai/responses"
    assert upstream.last_request.query == {"api-version": "2024-10-21"}
    got = await client.responses.retrieve(created.id)
    assert got.output_text == "echo: kept in azure"
    assert upstream.last_request.path == f"/openai/responses/{created.id}"
    await client.responses.delete(created.id)
    assert created.id not in upstream.stored_responses
    _only_key(upstream, "/openai/responses*", AZURE_KEY)
    models = [m.id async for m in client.models.list()]
    assert "az-gpt-4o" in models


async def test_azure_v1_embeddings(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    emb = await _azure_v1(sidecar).embeddings.create(model="az-gpt-4o", input="vectors please")
    assert len(emb.data[0].embedding) == 8
    assert upstream.last_request.path == "/openai/deployments/gpt-4o/embeddings"


# ── the in-flight gauge (read at scrape time) ────────────────────────────────────────────────


async def test_the_inflight_gauge_counts_requests_being_served(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.slow_headers(0.5))
    call = asyncio.ensure_future(
        sidecar.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    )
    await wait_for(lambda: upstream.requests != [], what="the request upstream")
    assert sidecar.metric("aiguard_inflight_requests") == 1
    await call
    assert sidecar.metric("aiguard_inflight_requests") == 0
