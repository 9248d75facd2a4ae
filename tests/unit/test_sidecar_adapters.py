"""Provider adapters: a request body is parsed once into an Exchange whose text segments point
back into the JSON, so a guardrail can rewrite text without knowing the provider format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aiguard_api.policy import Operation
from aiguard_sidecar.errors import ProxyError
from aiguard_sidecar.exchange import Api, Exchange, Role, Unscanned, WireFormat, get_at
from aiguard_sidecar.providers import ANTHROPIC, AZURE, OPENAI
from aiguard_sidecar.providers.anthropic import AnthropicDialect
from aiguard_sidecar.providers.azure import AzureDialect
from aiguard_sidecar.providers.openai import OpenAIDialect


def parse(inbound: Any, api: Api, body: dict[str, Any], **kw: Any) -> Exchange:
    return inbound.parse(api, json.dumps(body).encode(), **kw)  # type: ignore[no-any-return]


def texts(ex: Exchange) -> list[tuple[str, Role]]:
    return [(s.text, s.role) for s in ex.segments]


CHAT_CASES: list[tuple[str, dict[str, Any], list[tuple[str, Role]], dict[Unscanned, int]]] = [
    (
        "plain strings",
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]},
        [("S", Role.SYSTEM), ("U", Role.USER)],
        {},
    ),
    (
        "developer is system",
        {"messages": [{"role": "developer", "content": "D"}]},
        [("D", Role.SYSTEM)],
        {},
    ),
    (
        "content parts with an image and audio",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:..."}},
                        {"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}},
                        {"type": "hologram"},
                    ],
                }
            ]
        },
        [("look", Role.USER)],
        {Unscanned.IMAGE: 1, Unscanned.AUDIO: 1, Unscanned.UNKNOWN: 1},
    ),
    (
        "tool calls and tool results",
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"q":1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "RESULT"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        },
        [('{"q":1}', Role.TOOL_CALL), ("RESULT", Role.TOOL_RESULT)],
        {},
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "expected", "unscanned"), CHAT_CASES, ids=[c[0] for c in CHAT_CASES]
)
def test_when_openai_chat_is_parsed_then_every_text_is_a_segment(
    case: str,
    body: dict[str, Any],
    expected: list[tuple[str, Role]],
    unscanned: dict[Unscanned, int],
) -> None:
    ex = parse(OPENAI, Api.CHAT_COMPLETIONS, {"model": "gpt-4o", **body})
    assert (ex.wire, ex.operation, ex.model) == (WireFormat.OPENAI, Operation.CHAT, "gpt-4o")
    assert texts(ex) == expected
    assert ex.unscanned == unscanned
    for seg in ex.segments:  # every locator leads back to its text
        assert get_at(ex.body, seg.path) == seg.text
    assert ex.uses_tools == ("tools" in body)


def test_when_a_segment_is_rewritten_then_the_body_changes_and_nothing_else() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "mail a@b.c"}]}],
    }
    ex = parse(OPENAI, Api.CHAT_COMPLETIONS, body)
    ex.set_text(ex.segments[0], "mail <EMAIL_ADDRESS>")
    assert ex.modified
    assert ex.body == {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "mail <EMAIL_ADDRESS>"}]}
        ],
    }
    call = OpenAIDialect("https://api.openai.com/v1").build(ex, "gpt-4o")
    assert json.loads(call.body or b"") == ex.body


def test_responses_input_items() -> None:
    body = {
        "model": "gpt-4o",
        "instructions": "I",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Q"},
                    {"type": "input_image", "image_url": "x"},
                ],
            },
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "OUT"},
            {"type": "reasoning", "id": "r"},
            {"type": "file_search_call", "id": "fs"},
        ],
        "tools": [{"type": "function", "name": "f"}],
        "stream": True,
    }
    ex = parse(OPENAI, Api.RESPONSES, body)
    assert ex.operation is Operation.RESPONSES
    assert ex.stream
    assert ex.uses_tools
    assert texts(ex) == [
        ("I", Role.SYSTEM),
        ("Q", Role.USER),
        ("{}", Role.TOOL_CALL),
        ("OUT", Role.TOOL_RESULT),
    ]
    assert ex.unscanned == {Unscanned.IMAGE: 1, Unscanned.UNKNOWN: 1}
    assert texts(parse(OPENAI, Api.RESPONSES, {"model": "m", "input": "hi"})) == [("hi", Role.USER)]


@pytest.mark.parametrize(
    ("value", "segments", "unscanned"),
    [
        ("one", ["one"], {}),
        (["a", "b"], ["a", "b"], {}),
        ([1, 2, 3], [], {Unscanned.TOKENS: 1}),
        ([[1, 2], [3]], [], {Unscanned.TOKENS: 2}),
    ],
)
def test_embeddings_inputs(
    value: Any, segments: list[str], unscanned: dict[Unscanned, int]
) -> None:
    ex = parse(OPENAI, Api.EMBEDDINGS, {"model": "e", "input": value})
    assert ex.operation is Operation.EMBEDDINGS
    assert [s.text for s in ex.segments] == segments
    assert ex.unscanned == unscanned


def test_anthropic_messages() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "SYS"}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Q"},
                    {"type": "image", "source": {"type": "base64", "data": "..."}},
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "DOC"},
                    },
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "...",
                        },
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {
                        "type": "tool_use",
                        "id": "t",
                        "name": "search",
                        "input": {"query": "Q2", "n": 3},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": "R"}],
                    }
                ],
            },
        ],
        "tools": [{"name": "search", "input_schema": {}}],
    }
    ex = parse(ANTHROPIC, Api.MESSAGES, body)
    assert (ex.wire, ex.operation, ex.uses_tools) == (WireFormat.ANTHROPIC, Operation.CHAT, True)
    assert texts(ex) == [
        ("SYS", Role.SYSTEM),
        ("Q", Role.USER),
        ("DOC", Role.DOCUMENT),
        ("Q2", Role.TOOL_CALL),
        ("R", Role.TOOL_RESULT),
    ]
    assert ex.unscanned == {Unscanned.IMAGE: 1, Unscanned.FILE: 1}
    for seg in ex.segments:
        assert get_at(ex.body, seg.path) == seg.text


def test_azure_deployment_from_the_path_is_the_model() -> None:
    ex = parse(AZURE, Api.CHAT_COMPLETIONS, {"messages": []}, path_model="prod-gpt4o")
    assert (ex.model, ex.deployment) == ("prod-gpt4o", "prod-gpt4o")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", "invalid_json"),
        (b"[1]", "invalid_json"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": 3}', "missing_model"),
        # valid JSON, not text: a lone surrogate cannot be scanned, hashed or sent as UTF-8
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
            "invalid_json",
        ),
        (b'{"model": "m", "messages": [], "metadata": {"\\uDFFF": 1}}', "invalid_json"),
    ],
)
def test_unusable_bodies_are_400(raw: bytes, code: str) -> None:
    with pytest.raises(ProxyError) as info:
        OPENAI.parse(Api.CHAT_COMPLETIONS, raw)
    assert (info.value.status, info.value.code) == (400, code)


# ── upstream requests ───────────────────────────────────────────────────────────────────────


def test_unchanged_requests_go_upstream_byte_for_byte() -> None:
    raw = b'{"model": "gpt-4o",  "messages": [{"role": "user", "content": "hi"}]}'
    ex = OPENAI.parse(Api.CHAT_COMPLETIONS, raw)
    call = OpenAIDialect("https://api.openai.com/v1/").build(ex, "gpt-4o")
    assert call.body is raw
    assert str(call.url) == "https://api.openai.com/v1/chat/completions"


def test_model_pinning_and_stream_usage_are_added_without_touching_the_exchange() -> None:
    body = {"model": "smart", "stream": True, "stream_options": {"foo": 1}, "messages": []}
    ex = parse(OPENAI, Api.CHAT_COMPLETIONS, body)
    call = OpenAIDialect("https://x/v1").build(ex, "gpt-4o-2024-08-06")
    sent = json.loads(call.body or b"")
    assert sent["model"] == "gpt-4o-2024-08-06"
    assert sent["stream_options"] == {"foo": 1, "include_usage": True}
    assert ex.body == body  # a failover builds its own request from the original


def test_azure_dialect_urls() -> None:
    d = AzureDialect("https://res.openai.azure.com", api_version="2024-10-21")
    chat = parse(OPENAI, Api.CHAT_COMPLETIONS, {"model": "gpt-4o", "messages": []})
    call = d.build(chat, "my deployment")
    assert str(call.url) == (
        "https://res.openai.azure.com/openai/deployments/my%20deployment/chat/completions"
        "?api-version=2024-10-21"
    )
    assert d.auth_header == "api-key"
    assert d.auth_value("k") == "k"
    resp = d.build(parse(OPENAI, Api.RESPONSES, {"model": "gpt-4o", "input": "x"}), "dep")
    assert str(resp.url).endswith("/openai/responses?api-version=2024-10-21")
    assert json.loads(resp.body or b"")["model"] == "dep"


def test_anthropic_dialect_and_unsupported_apis() -> None:
    d = AnthropicDialect("https://api.anthropic.com")
    ex = parse(ANTHROPIC, Api.MESSAGES, {"model": "claude-x", "messages": []})
    call = d.build(ex, "claude-x")
    assert str(call.url) == "https://api.anthropic.com/v1/messages"
    assert call.headers == {"anthropic-version": "2023-06-01"}
    embeddings = parse(OPENAI, Api.EMBEDDINGS, {"model": "e", "input": "x"})
    with pytest.raises(ProxyError) as info:
        d.build(embeddings, "e")
    assert info.value.status == 502
    assert info.value.code == "unsupported_operation"


@pytest.mark.parametrize("kind", [[], ["text"], {"text": 1}, 1, None], ids=repr)
def test_a_content_part_whose_type_is_not_a_string_is_counted_not_a_crash(kind: Any) -> None:
    """Found by fuzzing: ``"type": []`` crashed the parser (an unhashable set lookup) and the
    client got a 500; such a part is unknown content, counted like any other."""
    part = {"type": kind, "text": "hello"}
    chat = parse(OPENAI, Api.CHAT_COMPLETIONS, {"model": "m", "messages": [
        {"role": "user", "content": [part, {"type": "text", "text": "ok"}]}]})  # fmt: skip
    assert texts(chat) == [("ok", Role.USER)]
    assert chat.unscanned == {Unscanned.UNKNOWN: 1}
    messages = parse(ANTHROPIC, Api.MESSAGES, {"model": "m", "max_tokens": 1, "messages": [
        {"role": "user", "content": [part, {"type": "text", "text": "ok"}]}]})  # fmt: skip
    assert texts(messages) == [("ok", Role.USER)]
    assert messages.unscanned == {Unscanned.UNKNOWN: 1}


def test_a_surrogate_pair_is_one_character_and_parses() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}]}'
    ex = OPENAI.parse(Api.CHAT_COMPLETIONS, raw)
    assert texts(ex) == [("smile \U0001f600", Role.USER)]
