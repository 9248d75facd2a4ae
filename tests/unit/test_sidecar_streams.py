"""Responses, JSON and SSE: usage, served model and output text are read on the way through;
SSE is split into events whatever the chunk boundaries; the usage chunk the sidecar asked for is
hidden from a client that did not; errors render in each wire format."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aiguard_sidecar.errors import ErrorKind, ProxyError
from aiguard_sidecar.exchange import Api, EventAction, Exchange, Role
from aiguard_sidecar.providers import ANTHROPIC, OPENAI
from aiguard_sidecar.providers import sse as sse_module
from aiguard_sidecar.providers.base import StreamParser
from aiguard_sidecar.providers.sse import SSESplitter, parse_block


def sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return f"{head}data: {data}\n\n".encode()


def chat_exchange(*, include_usage: bool = False) -> Exchange:
    body: dict[str, Any] = {"model": "gpt-4o", "stream": True, "messages": []}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return OPENAI.parse(Api.CHAT_COMPLETIONS, json.dumps(body).encode())


def chunk(content: str | None, *, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "c1",
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


CHAT_STREAM = [
    sse(chunk("Hel")),
    sse(chunk("lo")),
    sse(chunk(None, finish="stop")),
    sse(
        {
            "id": "c1",
            "model": "gpt-4o-2024-08-06",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        }
    ),
    sse("[DONE]"),
]


def run(parser: StreamParser, events: list[bytes]) -> list[bytes]:
    out = []
    for raw in events:
        event = parser.feed(raw)
        if event.action is EventAction.FORWARD:
            out.append(event.render())
    return out


def test_chat_stream_usage_is_read_and_the_unasked_usage_chunk_dropped() -> None:
    parser = OPENAI.stream_parser(chat_exchange())
    out = run(parser, CHAT_STREAM)
    assert out == [CHAT_STREAM[0], CHAT_STREAM[1], CHAT_STREAM[2], CHAT_STREAM[4]]
    info = parser.finish()
    assert parser.done
    assert (info.input_tokens, info.output_tokens) == (5, 2)
    assert (info.served_model, info.system_fingerprint) == ("gpt-4o-2024-08-06", "fp_1")
    assert [(s.text, s.role) for s in info.segments] == [("Hello", Role.OUTPUT)]
    assert info.finish_reasons == ["stop"]


def test_chat_stream_keeps_the_usage_chunk_the_client_asked_for() -> None:
    parser = OPENAI.stream_parser(chat_exchange(include_usage=True))
    assert run(parser, CHAT_STREAM) == CHAT_STREAM


def test_a_stream_event_can_be_rewritten_through_its_delta() -> None:
    parser = OPENAI.stream_parser(chat_exchange())
    event = parser.feed(sse(chunk("mail a@b.c")))
    (delta,) = event.deltas
    event.set_text(delta, "mail <EMAIL>")
    rendered = event.render()
    assert (
        json.loads(parse_block(rendered)[1] or "")["choices"][0]["delta"]["content"]
        == "mail <EMAIL>"
    )


def test_responses_stream() -> None:
    ex = OPENAI.parse(Api.RESPONSES, b'{"model": "gpt-4o", "input": "x", "stream": true}')
    parser = OPENAI.stream_parser(ex)
    response = {"id": "r1", "model": "gpt-4o-x", "status": "in_progress", "usage": None}
    events = [
        sse({"type": "response.created", "response": response}, "response.created"),
        sse(
            {
                "type": "response.output_text.delta",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hi",
            },
            "response.output_text.delta",
        ),
        sse(
            {
                "type": "response.output_text.delta",
                "output_index": 0,
                "content_index": 0,
                "delta": "!",
            },
            "response.output_text.delta",
        ),
        sse(
            {
                "type": "response.completed",
                "response": {
                    **response,
                    "status": "completed",
                    "usage": {"input_tokens": 3, "output_tokens": 2},
                },
            },
            "response.completed",
        ),
    ]
    assert run(parser, events) == events
    info = parser.finish()
    assert parser.done
    assert info.served_model == "gpt-4o-x"
    assert (info.input_tokens, info.output_tokens, info.segments[0].text) == (3, 2, "Hi!")


def test_anthropic_stream_usage_from_message_start_and_delta() -> None:
    ex = ANTHROPIC.parse(Api.MESSAGES, b'{"model": "claude-x", "stream": true, "messages": []}')
    parser = ANTHROPIC.stream_parser(ex)
    start = {
        "type": "message_start",
        "message": {
            "id": "m1",
            "model": "claude-x-1",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1},
        },
    }
    events = [
        sse(start, "message_start"),
        sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hey"},
            },
            "content_block_delta",
        ),
        sse({"type": "ping"}, "ping"),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 7},
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    assert run(parser, events) == events
    info = parser.finish()
    assert parser.done
    assert info.served_model == "claude-x-1"
    assert (info.input_tokens, info.output_tokens) == (15, 7)
    assert info.segments[0].text == "Hey"
    assert info.finish_reasons == ["end_turn"]


def test_a_stream_error_event_is_noted() -> None:
    ex = ANTHROPIC.parse(Api.MESSAGES, b'{"model": "claude-x", "stream": true, "messages": []}')
    parser = ANTHROPIC.stream_parser(ex)
    parser.feed(
        sse({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}, "error")
    )
    assert parser.info.stream_error == "overloaded_error"
    assert not parser.done


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_sse_events_survive_any_chunking(cuts: list[int]) -> None:
    stream = b"".join(CHAT_STREAM).replace(b"\n", b"\r\n") + b": keep-alive\n\n"
    splitter = SSESplitter()
    blocks: list[bytes] = []
    pos = 0
    for n in cuts * 20:
        if pos >= len(stream):
            break
        blocks += splitter.feed(stream[pos : pos + n])
        pos += n
    blocks += splitter.feed(stream[pos:])
    assert splitter.pending == b""
    assert blocks == [*CHAT_STREAM, b": keep-alive\n\n"]


def test_parse_block_fields() -> None:
    assert parse_block(b"event: a\ndata: x\ndata: y\n\n") == ("a", "x\ny")
    assert parse_block(b": comment\n\n") == (None, None)
    assert parse_block(b"data:nospace\n\n") == (None, "nospace")


def test_json_responses() -> None:
    chat = chat_exchange()
    body = {
        "id": "c1",
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_2",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi there"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2},
    }
    info = OPENAI.parse_response(chat, json.dumps(body).encode())
    assert (info.served_model, info.system_fingerprint, info.input_tokens, info.output_tokens) == (
        "gpt-4o-2024-08-06",
        "fp_2",
        9,
        2,
    )
    info.set_text(info.segments[0], "Hi [redacted]")
    assert info.modified
    assert info.doc is not None
    assert info.doc["choices"][0]["message"]["content"] == "Hi [redacted]"

    emb = OPENAI.parse(Api.EMBEDDINGS, b'{"model": "e", "input": "x"}')
    raw = (
        b'{"object":"list","data":[{"embedding":[0.1,-0.2],"index":0}],'
        b'"model":"text-embedding-3-small","usage":{"prompt_tokens":4,"total_tokens":4}}'
    )
    info = OPENAI.parse_response(emb, raw)
    assert (info.served_model, info.input_tokens) == ("text-embedding-3-small", 4)

    msg = ANTHROPIC.parse(Api.MESSAGES, b'{"model": "claude-x", "messages": []}')
    raw = (
        b'{"id":"m","model":"claude-x-1","content":[{"type":"text","text":"Yo"}],'
        b'"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}'
    )
    info = ANTHROPIC.parse_response(msg, raw)
    assert (info.served_model, info.input_tokens, info.output_tokens, info.segments[0].text) == (
        "claude-x-1",
        3,
        1,
        "Yo",
    )


def test_error_bodies_in_each_format() -> None:
    err = ProxyError(
        ErrorKind.PERMISSION, "aiguard policy a/b: denied", code="access_denied", rule="r"
    )
    assert json.loads(OPENAI.error_body(err)) == {
        "error": {
            "message": "aiguard policy a/b: denied",
            "type": "permission_error",
            "param": None,
            "code": "access_denied",
        }
    }
    assert json.loads(ANTHROPIC.error_body(err)) == {
        "type": "error",
        "error": {"type": "permission_error", "message": "aiguard policy a/b: denied"},
    }
    limited = ProxyError(ErrorKind.RATE_LIMITED, "slow down", code="rate_limited", retry_after=2.2)
    assert limited.status == 429
    assert limited.headers() == {"Retry-After": "3"}
    assert ProxyError(ErrorKind.UNAVAILABLE, "x", code="c", retry_after=0.01).headers() == {
        "Retry-After": "1"
    }
    chat = chat_exchange()
    event = OPENAI.stream_error_event(
        ProxyError(ErrorKind.BAD_GATEWAY, "broke", code="upstream_error"), chat
    )
    assert json.loads(parse_block(event)[1] or "")["error"]["message"] == "broke"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([b"data: ", b"data:", b"event: x\ndata: ", b""]))
def test_parse_block_one_data_line_reads_like_any_block(value: bytes, head: bytes) -> None:
    """The one-``data:``-line shortcut gives what reading the block line by line gives,
    for any bytes (invalid UTF-8, CR, colons) on that line."""
    for block in (head + value + b"\n\n", head + value.replace(b"\n", b"") + b"\n\n"):
        assert parse_block(block) == sse_module._parse_lines(block)
