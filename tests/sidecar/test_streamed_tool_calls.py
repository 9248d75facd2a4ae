"""Tool-call arguments the model returns go through the output guardrails, streamed or not:
OpenAI chat ``tool_calls[].function.arguments`` fragments, Responses API
``response.function_call_arguments.delta`` and Anthropic ``input_json_delta``, through the
sidecar with the official SDKs against the stand-in (``ProviderStandIn.tool_call``).

A value split across fragments is caught while it is held back; a block ends the stream with
an error event in the client's format; a redaction leaves the arguments valid JSON, and the
Responses API's closing events (``*.done``, ``response.completed``) repeat what was sent.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from tests.harness.standin import ProviderStandIn, ToolCall
from tests.sidecar.conftest import Sidecar, StartSidecar, make_policy
from tests.sidecar.test_guardrails_e2e import AWS_KEY_ID, NO_INJECTION, guardrails

APIS = ["chat", "responses", "anthropic"]
TOOLS_CHAT: Any = [
    {
        "type": "function",
        "function": {"name": "pay", "parameters": {"type": "object", "properties": {}}},
    }
]
TOOLS_RESPONSES: Any = [
    {"type": "function", "name": "pay", "parameters": {"type": "object", "properties": {}}}
]
TOOLS_ANTHROPIC: Any = [{"name": "pay", "input_schema": {"type": "object", "properties": {}}}]

# The card number is cut between two fragments: no fragment alone holds it.
CARD_ARGS = ['{"card": "4111 11', "11 1111 1", '111", "amount": 25}']
KEY_ARGS = ['{"user": "ops", "access_key": "AKIAIOSF', 'ODNN7EXAMPLE", "region": "eu-west-1"}']


async def _start(start_sidecar: StartSidecar, upstream: ProviderStandIn, **spec: Any) -> Sidecar:
    spec.setdefault("guardrails", NO_INJECTION)
    return await start_sidecar(make_policy(upstream, **spec), guardrails=guardrails)


class Streamed:
    """What a client read from a streamed tool call: argument fragments, error, final args."""

    def __init__(self) -> None:
        self.fragments: list[str] = []
        self.error: str | None = None  # the error's message
        self.error_code: str | None = None
        self.final: str | None = None  # the arguments a closing event repeats (Responses)

    @property
    def arguments(self) -> str:
        return "".join(self.fragments)


async def stream_tool_call(sc: Sidecar, api: str, prompt: str) -> Streamed:
    out = Streamed()
    if api == "chat":
        stream = await sc.openai().chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": prompt}],
            tools=TOOLS_CHAT,
            stream=True,
        )
        try:
            async for chunk in stream:
                for choice in chunk.choices:
                    for call in choice.delta.tool_calls or ():
                        if call.function is not None and call.function.arguments:
                            out.fragments.append(call.function.arguments)
        except openai.APIError as e:
            out.error, out.error_code = e.message, getattr(e, "code", None)
    elif api == "responses":
        rstream = await sc.openai().responses.create(
            model="gpt-4o", input=prompt, tools=TOOLS_RESPONSES, stream=True
        )
        async for event in rstream:
            if event.type == "response.function_call_arguments.delta":
                out.fragments.append(event.delta)
            elif event.type == "response.function_call_arguments.done":
                out.final = event.arguments
            elif event.type == "response.completed":
                (item,) = event.response.output
                assert item.type == "function_call"
                assert item.arguments == out.final  # every closing event says the same
            elif event.type == "error":
                out.error, out.error_code = event.message, event.code
    else:
        client = sc.anthropic()
        try:
            async with client.messages.stream(
                model="claude-sonnet-4-5",
                max_tokens=100,
                messages=[{"role": "user", "content": prompt}],
                tools=TOOLS_ANTHROPIC,
            ) as s:
                async for ev in s:
                    if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
                        out.fragments.append(ev.delta.partial_json)
                message = await s.get_final_message()
                (block,) = message.content
                assert block.type == "tool_use"
                out.final = json.dumps(block.input)  # the SDK parsed the streamed JSON
        except anthropic.APIStatusError as e:
            out.error = e.message
            body: Any = e.body
            out.error_code = body["error"]["type"] if isinstance(body, dict) else None
    return out


@pytest.mark.parametrize("api", APIS)
async def test_card_number_split_across_streamed_tool_arguments_ends_the_stream(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, api: str
) -> None:
    upstream.tool_call = ToolCall("pay", CARD_ARGS)
    sc = await _start(
        start_sidecar,
        upstream,
        guardrails={**NO_INJECTION, "output": {"pii": {"entities": {"CREDIT_CARD": "block"}}}},
    )
    got = await stream_tool_call(sc, api, "pay the invoice")
    assert got.error is not None, "the stream was not ended with an error event"
    assert "guardrails.output.pii" in got.error
    assert "CREDIT_CARD" in got.error
    if api != "anthropic":
        assert got.error_code == "guardrail_blocked"
    else:
        assert got.error_code == "invalid_request_error"
    digits = "".join(c for c in got.arguments if c.isdigit())
    assert "4111111111111111" not in digits
    assert "1111" not in got.arguments.split("4111")[-1]  # the held fragment never left
    rec = sc.sink.last
    assert rec.outcome == "guardrail_blocked"
    assert rec.findings[("output", "pii", "CREDIT_CARD", "block")] == 1


@pytest.mark.parametrize("api", APIS)
async def test_secret_split_across_streamed_tool_arguments_is_redacted_and_json_stays_valid(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, api: str
) -> None:
    upstream.tool_call = ToolCall("pay", KEY_ARGS)
    sc = await _start(start_sidecar, upstream)  # output secrets: redact (the default)
    got = await stream_tool_call(sc, api, "rotate the key")
    assert got.error is None
    assert AWS_KEY_ID not in got.arguments
    args = json.loads(got.arguments)
    assert args["user"] == "ops"
    assert args["region"] == "eu-west-1"
    assert args["access_key"] != AWS_KEY_ID
    assert "AWS_ACCESS_KEY_ID" in args["access_key"]
    if got.final is not None:  # Responses: the closing events; Anthropic: the SDK's parse
        assert json.loads(got.final) == args
    rec = sc.sink.last
    assert rec.outcome == "ok"
    assert rec.findings[("output", "secrets", "AWS_ACCESS_KEY_ID", "redact")] == 1


async def test_anthropic_tool_use_input_is_scanned_in_a_json_response(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    upstream.tool_call = ToolCall("pay", KEY_ARGS)
    sc = await _start(start_sidecar, upstream)
    message = await sc.anthropic().messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "rotate the key"}],
        tools=TOOLS_ANTHROPIC,
    )
    (block,) = message.content
    assert block.type == "tool_use"
    args: dict[str, str] = dict(block.input)  # type: ignore[call-overload]
    assert args["access_key"] != AWS_KEY_ID
    assert "AWS_ACCESS_KEY_ID" in args["access_key"]
    assert args["region"] == "eu-west-1"
    assert sc.sink.last.findings[("output", "secrets", "AWS_ACCESS_KEY_ID", "redact")] == 1


async def test_streamed_text_is_repeated_redacted_in_the_responses_closing_events(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    """``response.output_text.done``, ``content_part.done``, ``output_item.done`` and
    ``response.completed`` repeat the whole text: they carry what the deltas carried."""
    upstream.reply = ["Write to jane.d", "oe@exam", "ple.com today."]
    sc = await _start(start_sidecar, upstream)
    stream = await sc.openai().responses.create(model="gpt-4o", input="hi", stream=True)
    deltas: list[str] = []
    repeated: list[str] = []
    async for event in stream:
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.output_text.done":
            repeated.append(event.text)
        elif event.type == "response.content_part.done":
            assert event.part.type == "output_text"
            repeated.append(event.part.text)
        elif event.type == "response.output_item.done":
            assert event.item.type == "message"
            repeated.extend(p.text for p in event.item.content if p.type == "output_text")
        elif event.type == "response.completed":
            repeated.append(event.response.output_text)
    assert "".join(deltas) == "Write to <EMAIL_ADDRESS> today."
    assert repeated == ["Write to <EMAIL_ADDRESS> today."] * 4
