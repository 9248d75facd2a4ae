"""The provider stand-in, driven by the official SDKs exactly as the sidecar's upstream would be."""

from __future__ import annotations

import base64
import itertools
import json
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
import trustme
from openai.types.chat import ChatCompletionChunk

from tests.harness.standin import (
    Fault,
    ProviderStandIn,
    StandInThread,
    count_tokens,
    split_into_chunks,
)

REPO = Path(__file__).resolve().parents[2]
OPENAI_KEY = "sk-real-openai"
AZURE_KEY = "azure-real-key"
ANTHROPIC_KEY = "sk-ant-real"
USER_TEXT = "please summarise the quarterly report for me"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": USER_TEXT},
]


# ── fixtures ────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[ProviderStandIn]:
    """One plain-HTTP stand-in per module, served from a background thread for the sync SDKs."""
    standin = ProviderStandIn(
        openai_keys=[OPENAI_KEY], azure_keys=[AZURE_KEY], anthropic_keys=[ANTHROPIC_KEY]
    )
    with standin.start_in_thread():
        yield standin


@pytest.fixture
def upstream(shared_upstream: ProviderStandIn) -> Iterator[ProviderStandIn]:
    """The shared stand-in, with no recorded requests, no faults and its initial configuration."""
    shared_upstream.clear()
    yield shared_upstream
    shared_upstream.clear()


# SDK clients are shared too: building one loads the system trust store, which is slow.


@pytest.fixture(scope="module")
def shared_oai(shared_upstream: ProviderStandIn) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=shared_upstream.openai_base_url, api_key=OPENAI_KEY, max_retries=0, timeout=5
    ) as client:
        yield client


@pytest.fixture(scope="module")
def shared_claude(shared_upstream: ProviderStandIn) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=shared_upstream.anthropic_base_url,
        api_key=ANTHROPIC_KEY,
        max_retries=0,
        timeout=5,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def shared_azure(shared_upstream: ProviderStandIn) -> Iterator[openai.AzureOpenAI]:
    with openai.AzureOpenAI(
        azure_endpoint=shared_upstream.azure_endpoint,
        api_key=AZURE_KEY,
        api_version="2024-10-21",
        max_retries=0,
        timeout=5,
    ) as client:
        yield client


@pytest.fixture
def oai(shared_oai: openai.OpenAI, upstream: ProviderStandIn) -> openai.OpenAI:
    return shared_oai


@pytest.fixture
def claude(shared_claude: anthropic.Anthropic, upstream: ProviderStandIn) -> anthropic.Anthropic:
    return shared_claude


@pytest.fixture
def azure(shared_azure: openai.AzureOpenAI, upstream: ProviderStandIn) -> openai.AzureOpenAI:
    return shared_azure


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def client_tls(ca: trustme.CA, minimum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if minimum is not None:
        context.minimum_version = minimum
    return context


def chat_text(client: openai.OpenAI) -> list[str]:
    """Stream a chat completion and return the content pieces in arrival order."""
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    with stream:
        return [
            c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
        ]


def collect_content(stream: openai.Stream[ChatCompletionChunk], into: list[str]) -> None:
    """Append each content delta to ``into`` as it arrives (kept when the stream fails)."""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            into.append(chunk.choices[0].delta.content)


# ── OpenAI ──────────────────────────────────────────────────────────────────────────────────────


def test_chat_completion_echoes_the_last_user_message(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert completion.choices[0].message.content == f"echo: {USER_TEXT}"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_tokens("You are terse.") + count_tokens(
        USER_TEXT
    )
    assert completion.usage.completion_tokens == count_tokens(f"echo: {USER_TEXT}")


def test_streamed_chat_arrives_in_several_chunks(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    upstream.stream_chunks = 3
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    with stream:
        chunks = list(stream)

    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert pieces == split_into_chunks(f"echo: {USER_TEXT}", 3)
    assert len(pieces) == 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_tokens(f"echo: {USER_TEXT}")


async def test_async_client_streams_chat() -> None:
    async with (
        ProviderStandIn(stream_chunks=2) as upstream,
        openai.AsyncOpenAI(
            base_url=upstream.openai_base_url, api_key="any", max_retries=0
        ) as client,
    ):
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]

    assert "".join(p for p in pieces if p) == f"echo: {USER_TEXT}"
    assert len([p for p in pieces if p]) == 2


def test_responses_api_returns_output_text_and_usage(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gpt-4o", input="hello there", instructions="Be brief.")

    assert response.output_text == "echo: hello there"
    assert response.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens == 4
    assert response.usage.output_tokens == 3


def test_streamed_responses_api_emits_the_real_event_types(oai: openai.OpenAI) -> None:
    stream = oai.responses.create(
        model="gpt-4o", input=[{"role": "user", "content": "one two three"}], stream=True
    )
    with stream:
        events = list(stream)

    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "echo: one two three"
    assert len(deltas) == 4
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 4
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_embeddings_decode_the_same_in_float_and_base64(oai: openai.OpenAI) -> None:
    default = oai.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta gamma"])
    floats = oai.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta gamma"], encoding_format="float"
    )

    assert len(default.data) == 2
    assert len(default.data[0].embedding) == 8
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert default.data[0].embedding != default.data[1].embedding
    assert default.usage.prompt_tokens == 3


def test_models_are_listed_in_openai_format(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]

    assert "gpt-4o" in ids
    assert oai.models.retrieve("gpt-4o").owned_by == "openai"


def test_max_tokens_cuts_the_reply_with_finish_reason_length(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)

    assert completion.choices[0].message.content == "echo: please"
    assert completion.choices[0].finish_reason == "length"


def test_unknown_models_can_be_rejected_like_the_real_api(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    upstream.reject_unknown_models = True

    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="gpt-unreleased", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


# ── Azure OpenAI ────────────────────────────────────────────────────────────────────────────────


def test_azure_chat_uses_the_deployment_path_and_api_key_header(
    azure: openai.AzureOpenAI, upstream: ProviderStandIn
) -> None:
    completion = azure.chat.completions.create(model="prod-gpt4o", messages=MESSAGES)

    assert completion.choices[0].message.content == f"echo: {USER_TEXT}"
    seen = upstream.last_request
    assert seen.provider == "azure"
    assert seen.path == "/openai/deployments/prod-gpt4o/chat/completions"
    assert seen.query == {"api-version": "2024-10-21"}
    assert seen.headers["api-key"] == AZURE_KEY
    assert "authorization" not in seen.headers


def test_azure_stream_starts_with_prompt_filter_results(
    azure: openai.AzureOpenAI, upstream: ProviderStandIn
) -> None:
    stream = azure.chat.completions.create(model="prod-gpt4o", messages=MESSAGES, stream=True)
    with stream:
        chunks = list(stream)

    assert chunks[0].choices == []
    assert chunks[0].model_extra is not None
    assert "prompt_filter_results" in chunks[0].model_extra
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        f"echo: {USER_TEXT}"
    )


def test_azure_embeddings(azure: openai.AzureOpenAI, upstream: ProviderStandIn) -> None:
    result = azure.embeddings.create(model="embed-deploy", input="hello")

    assert len(result.data[0].embedding) == 8
    assert upstream.last_request.path == "/openai/deployments/embed-deploy/embeddings"


# ── Anthropic ───────────────────────────────────────────────────────────────────────────────────


def test_anthropic_message_echoes_the_last_user_message(
    claude: anthropic.Anthropic, upstream: ProviderStandIn
) -> None:
    message = claude.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        system="You are terse.",
        messages=[{"role": "user", "content": [{"type": "text", "text": USER_TEXT}]}],
    )

    assert message.content[0].type == "text"
    assert message.content[0].text == f"echo: {USER_TEXT}"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == count_tokens("You are terse.") + count_tokens(USER_TEXT)
    seen = upstream.last_request
    assert seen.api_key == ANTHROPIC_KEY  # this SDK sends it as a Bearer token
    assert "anthropic-version" in seen.headers


def test_streamed_anthropic_message_arrives_in_several_text_deltas(
    claude: anthropic.Anthropic,
) -> None:
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": USER_TEXT}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()

    assert pieces == split_into_chunks(f"echo: {USER_TEXT}", 4)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == count_tokens(f"echo: {USER_TEXT}")


def test_raw_anthropic_stream_has_the_documented_event_order(
    claude: anthropic.Anthropic, upstream: ProviderStandIn
) -> None:
    upstream.stream_chunks = 2
    stream = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    with stream:
        types = [event.type for event in stream]

    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 2,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


# ── scripting replies and drift ─────────────────────────────────────────────────────────────────


def test_scripted_chunks_are_sent_exactly_as_given(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    upstream.reply = ["Contact john.do", "e@example.com", " today."]

    assert chat_text(oai) == ["Contact john.do", "e@example.com", " today."]


def test_reply_can_be_computed_from_the_request(
    claude: anthropic.Anthropic, upstream: ProviderStandIn
) -> None:
    upstream.reply = lambda request: f"you sent {len(request.texts)} segments"

    message = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "x"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "you sent 1 segments"


def test_served_model_and_fingerprint_simulate_model_drift(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    upstream.served_model = "gpt-4o-2099-01-01"
    upstream.system_fingerprint = "fp_drifted"

    completion = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert completion.model == "gpt-4o-2099-01-01"
    assert completion.system_fingerprint == "fp_drifted"
    assert upstream.last_request.model == "gpt-4o"


# ── recording and authentication ────────────────────────────────────────────────────────────────


def test_every_request_is_recorded_with_headers_and_parsed_body(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, user="alice")

    seen = upstream.last_request
    assert (seen.method, seen.path, seen.provider, seen.operation) == (
        "POST",
        "/v1/chat/completions",
        "openai",
        "chat",
    )
    assert seen.api_key == OPENAI_KEY
    assert seen.body["user"] == "alice"
    assert seen.texts == ("You are terse.", USER_TEXT)
    assert USER_TEXT in seen.prompt_text
    assert seen.status == 200
    assert seen.tls_version is None
    assert upstream.requests_to("/v1/chat/*") == [seen]


def test_wrong_openai_key_is_rejected_with_openai_error_envelope(
    upstream: ProviderStandIn,
) -> None:
    with (
        openai.OpenAI(
            base_url=upstream.openai_base_url, api_key="placeholder", max_retries=0
        ) as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.models.list()

    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "invalid_request_error"
    assert upstream.last_request.status == 401


def test_wrong_azure_key_is_rejected(upstream: ProviderStandIn) -> None:
    with (
        openai.AzureOpenAI(
            azure_endpoint=upstream.azure_endpoint,
            api_key="placeholder",
            api_version="2024-10-21",
            max_retries=0,
        ) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.chat.completions.create(model="d", messages=MESSAGES)


def test_wrong_anthropic_key_is_rejected_with_anthropic_error_envelope(
    upstream: ProviderStandIn,
) -> None:
    with (
        anthropic.Anthropic(
            base_url=upstream.anthropic_base_url, api_key="placeholder", max_retries=0
        ) as client,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[])

    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": caught.value.response.headers["request-id"],
    }


def test_raw_wire_errors_match_each_provider(upstream: ProviderStandIn) -> None:
    with httpx2.Client(base_url=upstream.url) as raw:
        missing_key = raw.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
        no_version = raw.post(
            "/v1/messages",
            headers={"x-api-key": ANTHROPIC_KEY},
            json={"model": "m", "max_tokens": 1, "messages": []},
        )
        no_api_version = raw.post(
            "/openai/deployments/d/chat/completions",
            headers={"api-key": AZURE_KEY},
            json={"messages": []},
        )
        not_json = raw.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {OPENAI_KEY}"},
            content=b"{nope",
        )

    assert missing_key.status_code == 401
    assert set(missing_key.json()["error"]) == {"message", "type", "param", "code"}
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    assert no_api_version.status_code == 404
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"


# ── faults ──────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, openai.InternalServerError),
        (502, openai.InternalServerError),
        (503, openai.InternalServerError),
        (429, openai.RateLimitError),
    ],
)
def test_http_fault_surfaces_as_the_sdk_status_error(
    oai: openai.OpenAI,
    upstream: ProviderStandIn,
    status: int,
    error: type[openai.APIStatusError],
) -> None:
    upstream.fail_next(status)

    with pytest.raises(error) as caught:
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == status
    assert oai.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


def test_rate_limit_carries_retry_after(oai: openai.OpenAI, upstream: ProviderStandIn) -> None:
    upstream.fail_next(Fault.rate_limited(retry_after=7))

    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


def test_fault_body_can_be_a_gateway_html_page(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.http(502, body="<html>502 Bad Gateway</html>"))

    with pytest.raises(openai.InternalServerError) as caught:
        oai.models.list()
    assert caught.value.response.headers["content-type"].startswith("text/html")


def test_anthropic_overload_is_a_529_overloaded_error(
    claude: anthropic.Anthropic, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(529)

    with pytest.raises(anthropic.OverloadedError) as caught:
        claude.messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_reset_aborts_the_connection_without_a_response(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.reset())

    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert upstream.last_request.status is None
    assert upstream.last_request.fault == Fault.reset()


def test_slow_headers_trip_the_client_timeout(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.slow_headers(1.0))

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, timeout=0.2)
    assert time.monotonic() - started < 0.9


def test_stalled_stream_times_out_after_the_chunks_already_sent(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.stall_stream(after_chunks=2, seconds=2.0))
    received: list[str] = []

    stream = oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, timeout=0.3
    )
    with stream, pytest.raises(openai.APITimeoutError):
        collect_content(stream, received)
    assert received == split_into_chunks(f"echo: {USER_TEXT}", 4)[:2]


def test_short_stall_only_delays_the_stream(oai: openai.OpenAI, upstream: ProviderStandIn) -> None:
    upstream.fail_next(Fault.stall_stream(after_chunks=1, seconds=0.2))

    started = time.monotonic()
    assert "".join(chat_text(oai)) == f"echo: {USER_TEXT}"
    assert time.monotonic() - started >= 0.2


def test_truncated_stream_is_a_connection_error_after_some_chunks(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.truncate_stream(after_chunks=1))
    received: list[str] = []

    stream = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    with stream, pytest.raises(openai.APIConnectionError):
        collect_content(stream, received)
    assert received == split_into_chunks(f"echo: {USER_TEXT}", 4)[:1]


def test_truncated_anthropic_stream_never_reaches_message_stop(
    claude: anthropic.Anthropic, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.truncate_stream(after_chunks=2))
    types: list[str] = []

    stream = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": USER_TEXT}],
        stream=True,
    )
    with stream, pytest.raises(anthropic.APIConnectionError):
        types.extend(event.type for event in stream)
    assert types.count("content_block_delta") == 2
    assert "message_stop" not in types


def test_truncated_json_body_is_a_connection_error(
    oai: openai.OpenAI, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.truncate_stream(after_chunks=0))

    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)


def test_in_stream_error_event_is_raised_by_each_sdk(
    oai: openai.OpenAI, claude: anthropic.Anthropic, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.stream_error(after_chunks=1), times=2)

    with pytest.raises(openai.APIError, match="server had an error"):
        chat_text(oai)
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
        claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=9, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        list(stream.text_stream)


def test_slow_stream_spaces_out_the_chunks(oai: openai.OpenAI, upstream: ProviderStandIn) -> None:
    upstream.fail_next(Fault.slow_stream(0.05))
    arrivals: list[float] = []

    stream = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    with stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())

    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 4
    assert min(gaps) >= 0.04


def test_faults_scripted_for_one_path_leave_other_paths_alone(
    oai: openai.OpenAI, claude: anthropic.Anthropic, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(503, path="/v1/messages")

    assert oai.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    assert upstream.pending_faults == 1
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert upstream.pending_faults == 0


def test_enqueued_behaviours_apply_in_order(oai: openai.OpenAI, upstream: ProviderStandIn) -> None:
    upstream.enqueue(None, 500, None)
    outcomes: list[str] = []

    for _ in range(4):
        try:
            oai.models.list()
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("500")

    assert outcomes == ["ok", "500", "ok", "ok"]
    assert [r.status for r in upstream.requests] == [200, 500, 200, 200]


def test_fail_always_holds_until_cleared(oai: openai.OpenAI, upstream: ProviderStandIn) -> None:
    upstream.fail_always(503)

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oai.models.list()
    upstream.clear_faults()
    assert oai.models.list().data


# ── TLS, threads, lifecycle, CLI ────────────────────────────────────────────────────────────────


def test_sdks_talk_to_it_over_tls_with_a_test_ca(ca: trustme.CA) -> None:
    standin = ProviderStandIn(ssl_context=server_tls(ca))
    with (
        standin.start_in_thread(),
        openai.OpenAI(
            base_url=standin.openai_base_url,
            api_key="k",
            max_retries=0,
            http_client=httpx2.Client(verify=client_tls(ca)),
        ) as oai,
        anthropic.Anthropic(
            base_url=standin.anthropic_base_url,
            api_key="k",
            max_retries=0,
            http_client=httpx2.Client(verify=client_tls(ca)),
        ) as claude,
    ):
        assert standin.url.startswith("https://127.0.0.1:")
        assert "".join(chat_text(oai)) == f"echo: {USER_TEXT}"
        with claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            assert "".join(stream.text_stream) == "echo: hi"

    assert {r.tls_version for r in standin.requests} == {"TLSv1.3"}


def test_tls12_capped_upstream_is_refused_by_a_tls13_only_client(ca: trustme.CA) -> None:
    standin = ProviderStandIn(
        ssl_context=server_tls(ca), tls_maximum_version=ssl.TLSVersion.TLSv1_2
    )
    strict = client_tls(ca, minimum=ssl.TLSVersion.TLSv1_3)
    with (
        standin.start_in_thread(),
        openai.OpenAI(
            base_url=standin.openai_base_url,
            api_key="k",
            max_retries=0,
            http_client=httpx2.Client(verify=strict),
        ) as oai,
        httpx2.Client(verify=client_tls(ca)) as lenient,
    ):
        with pytest.raises(openai.APIConnectionError):
            oai.models.list()
        assert standin.requests == []
        assert lenient.get(
            f"{standin.url}/v1/models", headers={"authorization": "Bearer k"}
        ).is_success

    assert standin.last_request.tls_version == "TLSv1.2"


async def test_stop_interrupts_a_stalled_stream() -> None:
    upstream = ProviderStandIn()
    await upstream.start()
    upstream.fail_next(Fault.stall_stream(after_chunks=0, seconds=30))
    async with openai.AsyncOpenAI(
        base_url=upstream.openai_base_url, api_key="k", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )
        started = time.monotonic()
        await upstream.stop()
        with pytest.raises(openai.APIConnectionError):
            async for _ in stream:
                pass
    assert time.monotonic() - started < 5


def test_run_in_thread_gives_a_handle_with_url_and_stop() -> None:
    handle = ProviderStandIn.run_in_thread(reply="pong")
    try:
        assert isinstance(handle, StandInThread)
        with httpx2.Client() as raw:
            reply = raw.post(
                f"{handle.url}/v1/chat/completions",
                headers={"authorization": "Bearer k"},
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "ping"}]},
            )
        assert reply.json()["choices"][0]["message"]["content"] == "pong"
        assert len(handle.requests) == 1
    finally:
        handle.stop()
    with httpx2.Client() as raw, pytest.raises(httpx2.ConnectError):
        raw.get(f"http://127.0.0.1:{handle.standin.port}/v1/models")


def test_cli_serves_on_the_requested_port_until_terminated() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.standin", "--port", "0", "--reply", "from cli"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx2.Client() as raw:
            body = raw.post(
                f"{url}/v1/messages",
                headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
                json={
                    "model": "m",
                    "max_tokens": 9,
                    "messages": [{"role": "user", "content": "a"}],
                },
            ).json()
        assert body["content"][0]["text"] == "from cli"
    finally:
        process.terminate()
        assert process.wait(timeout=5) == 0
        if process.stdout is not None:
            process.stdout.close()


# ── helpers ─────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "chunks", "expected"),
    [
        ("one two three four five", 2, ["one two three ", "four five"]),
        ("one two", 4, ["on", "e ", "tw", "o"]),
        ("", 3, []),
        ("single", 1, ["single"]),
    ],
)
def test_split_into_chunks_preserves_the_text(text: str, chunks: int, expected: list[str]) -> None:
    assert split_into_chunks(text, chunks) == expected
    assert "".join(split_into_chunks(text, chunks)) == text


def test_base64_embeddings_are_little_endian_float32(upstream: ProviderStandIn) -> None:
    with httpx2.Client() as raw:
        reply = raw.post(
            f"{upstream.openai_base_url}/embeddings",
            headers={"authorization": f"Bearer {OPENAI_KEY}"},
            json={"model": "e", "input": "x", "encoding_format": "base64", "dimensions": 4},
        )
    encoded = reply.json()["data"][0]["embedding"]
    vector = struct.unpack("<4f", base64.b64decode(encoded))
    assert sum(v * v for v in vector) == pytest.approx(1.0, abs=1e-5)
    assert json.loads(upstream.last_request.raw_body)["dimensions"] == 4
