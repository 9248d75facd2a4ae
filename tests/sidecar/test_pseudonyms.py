"""Reversible pseudonymisation (``pii.pseudonymize: true``) through the sidecar with the official
SDKs: the provider sees ``<EMAIL_ADDRESS_1>``-style placeholders, the app gets its own values
back in the response — JSON and streamed, text and tool-call arguments, for OpenAI chat, the
Responses API and Anthropic messages; a placeholder cut across stream events is restored too.
The mapping lives only in the request's memory: the audit record counts restorations, and
neither it, the capture nor the logs hold a restored value.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest

from tests.harness.standin import ProviderStandIn, ToolCall
from tests.sidecar.conftest import Sidecar, StartSidecar, make_policy
from tests.sidecar.test_guardrails_e2e import guardrails
from tests.sidecar.test_streamed_tool_calls import stream_tool_call

JANE = "jane.doe@example.com"
BOB = "bob.smith@example.org"
CODENAME = 'Project "Nightjar"'  # a deny-list value with quotes: JSON-escaped in tool args
PROMPT = f"write to {JANE} and {BOB}, cc {JANE}"
UPSTREAM_PROMPT = "write to <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_2>, cc <EMAIL_ADDRESS_1>"

PSEUDONYMS: dict[str, Any] = {
    "input": {
        "promptInjection": {"enabled": False},
        "pii": {
            "pseudonymize": True,
            "denyLists": [{"entity": "CODENAME", "values": [CODENAME]}],
        },
    }
}
APIS = ["chat", "responses", "anthropic"]

# The reply cuts both placeholders across events; <EMAIL_ADDRESS_9> was never handed out.
SPLIT_REPLY = [
    "Sure, writing to <EMAIL_",
    "ADDRESS_1> and <EMAIL_ADD",
    "RESS_2> (not <EMAIL_ADDRESS_9>).",
]
SPLIT_RESTORED = f"Sure, writing to {JANE} and {BOB} (not <EMAIL_ADDRESS_9>)."


async def _start(start_sidecar: StartSidecar, upstream: ProviderStandIn, **spec: Any) -> Sidecar:
    spec.setdefault("guardrails", PSEUDONYMS)
    return await start_sidecar(make_policy(upstream, **spec), guardrails=guardrails)


async def ask(sc: Sidecar, api: str, prompt: str) -> str:
    if api == "chat":
        r = await sc.openai().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}]
        )
        return r.choices[0].message.content or ""
    if api == "responses":
        rr = await sc.openai().responses.create(model="gpt-4o", input=prompt)
        return rr.output_text
    m = await sc.anthropic().messages.create(
        model="claude-sonnet-4-5", max_tokens=200, messages=[{"role": "user", "content": prompt}]
    )
    return "".join(b.text for b in m.content if b.type == "text")


async def ask_streamed(sc: Sidecar, api: str, prompt: str) -> tuple[str, str | None]:
    """The text from the deltas, and the text a closing event repeats (Responses/Anthropic)."""
    if api == "chat":
        stream = await sc.openai().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return text, None
    if api == "responses":
        rstream = await sc.openai().responses.create(model="gpt-4o", input=prompt, stream=True)
        deltas: list[str] = []
        final: str | None = None
        async for event in rstream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                final = event.response.output_text
        return "".join(deltas), final
    async with sc.anthropic().messages.stream(
        model="claude-sonnet-4-5", max_tokens=200, messages=[{"role": "user", "content": prompt}]
    ) as s:
        text = "".join([t async for t in s.text_stream])
        message = await s.get_final_message()
    return text, "".join(b.text for b in message.content if b.type == "text")


def _no_originals(sc: Sidecar, caplog: pytest.LogCaptureFixture, *values: str) -> None:
    """Neither the audit record nor the sidecar's logs (the SDKs log their own requests)."""
    rec = sc.sink.last
    recorded = json.dumps(rec.summary(), default=str) + repr(rec.decisions) + repr(rec.findings)
    recorded += "".join(s.text for s in (rec.response.segments if rec.response else ()))
    logged = "\n".join(
        json.dumps({"msg": r.getMessage(), **getattr(r, "fields", {})}, default=str)
        for r in caplog.records
        if r.name.startswith("aiguard")
    )
    assert logged  # the sidecar did log (at DEBUG)
    for v in values:
        assert v not in recorded
        assert v not in logged


@pytest.mark.parametrize("api", APIS)
async def test_upstream_sees_placeholders_and_the_app_its_values(
    start_sidecar: StartSidecar,
    upstream: ProviderStandIn,
    caplog: pytest.LogCaptureFixture,
    api: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    sc = await _start(start_sidecar, upstream)
    answer = await ask(sc, api, PROMPT)
    sent = upstream.last_request.raw_body.decode()
    assert JANE not in sent
    assert BOB not in sent
    assert upstream.last_request.texts[-1] == UPSTREAM_PROMPT
    assert answer == f"echo: {PROMPT}"  # the stand-in echoed placeholders; restored here
    rec = sc.sink.last
    assert rec.findings[("input", "pii", "EMAIL_ADDRESS", "redact")] == 3
    assert rec.findings[("output", "pii", "EMAIL_ADDRESS", "restore")] == 3
    _no_originals(sc, caplog, JANE, BOB)


@pytest.mark.parametrize("api", APIS)
async def test_placeholders_cut_across_stream_events_are_restored(
    start_sidecar: StartSidecar,
    upstream: ProviderStandIn,
    caplog: pytest.LogCaptureFixture,
    api: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.reply = SPLIT_REPLY
    # The smallest holdback: the guard still waits for a placeholder to complete.
    spec = {**PSEUDONYMS, "output": {"streaming": {"holdbackChars": 0}}}
    sc = await _start(start_sidecar, upstream, guardrails=spec)
    text, final = await ask_streamed(sc, api, PROMPT)
    assert text == SPLIT_RESTORED
    if final is not None:
        assert final == SPLIT_RESTORED
    assert sc.sink.last.findings[("output", "pii", "EMAIL_ADDRESS", "restore")] == 2
    _no_originals(sc, caplog, JANE, BOB)


async def test_a_value_the_app_did_not_send_is_never_restored_across_requests(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    sc = await _start(start_sidecar, upstream)
    await ask(sc, "chat", PROMPT)
    # A second request with no PII: the first request's mapping is gone.
    upstream.reply = "it was <EMAIL_ADDRESS_1>"
    assert await ask(sc, "chat", "who was it?") == "it was <EMAIL_ADDRESS_1>"


@pytest.mark.parametrize("api", APIS)
async def test_streamed_tool_arguments_get_the_values_back_as_valid_json(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, api: str
) -> None:
    upstream.tool_call = ToolCall(
        "send", ['{"to": "<EMAIL_ADD', 'RESS_1>", "project": "<CODE', 'NAME_1>"}']
    )
    sc = await _start(start_sidecar, upstream)
    got = await stream_tool_call(sc, api, f"mail {JANE} about {CODENAME}")
    assert got.error is None
    assert json.loads(got.arguments) == {"to": JANE, "project": CODENAME}
    if got.final is not None:
        assert json.loads(got.final) == {"to": JANE, "project": CODENAME}
    assert CODENAME not in upstream.last_request.raw_body.decode()
    rec = sc.sink.last
    assert rec.findings[("output", "pii", "CODENAME", "restore")] == 1


@pytest.mark.parametrize("api", APIS)
async def test_tool_arguments_in_a_json_response_get_the_values_back(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, api: str
) -> None:
    upstream.tool_call = ToolCall(
        "send", ['{"to": "<EMAIL_ADDRESS_1>", "project": "<CODENAME_1>"}']
    )
    sc = await _start(start_sidecar, upstream)
    prompt = f"mail {JANE} about {CODENAME}"
    if api == "chat":
        r = await sc.openai().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}]
        )
        calls = r.choices[0].message.tool_calls
        assert calls is not None
        assert calls[0].type == "function"
        args = json.loads(calls[0].function.arguments)
    elif api == "responses":
        rr = await sc.openai().responses.create(model="gpt-4o", input=prompt)
        (item,) = rr.output
        assert item.type == "function_call"
        args = json.loads(item.arguments)
    else:
        m = await sc.anthropic().messages.create(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": prompt}],
        )
        (block,) = m.content
        assert block.type == "tool_use"
        args = block.input
    assert args == {"to": JANE, "project": CODENAME}


async def test_audit_mode_sends_the_values_and_restores_nothing(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    sc = await _start(start_sidecar, upstream, mode="audit")
    upstream.reply = "noted <EMAIL_ADDRESS_1>"
    assert await ask(sc, "chat", PROMPT) == "noted <EMAIL_ADDRESS_1>"
    assert JANE in upstream.last_request.raw_body.decode()
    assert ("output", "pii", "EMAIL_ADDRESS", "restore") not in sc.sink.last.findings


@pytest.mark.parametrize("streamed", [False, True])
async def test_restore_tool_arguments_off_keeps_placeholders_in_tool_calls_only(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, streamed: bool
) -> None:
    """``restoreToolArguments: false``: a tool call the model was steered into cannot carry
    the values out; the answer's text still gets them back."""
    spec = copy.deepcopy(PSEUDONYMS)
    spec["input"]["pii"]["restoreToolArguments"] = False
    sc = await _start(start_sidecar, upstream, guardrails=spec)
    upstream.tool_call = ToolCall(
        "fetch", ['{"url": "https://x.example/?q=<EMAIL_', 'ADDRESS_1>"}']
    )
    if streamed:
        got = await stream_tool_call(sc, "chat", f"mail {JANE}")
        assert got.error is None
        args = json.loads(got.arguments)
    else:
        r = await sc.openai().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"mail {JANE}"}]
        )
        calls = r.choices[0].message.tool_calls
        assert calls is not None
        assert calls[0].type == "function"
        args = json.loads(calls[0].function.arguments)
    assert args == {"url": "https://x.example/?q=<EMAIL_ADDRESS_1>"}
    assert ("output", "pii", "EMAIL_ADDRESS", "restore") not in sc.sink.last.findings
    upstream.tool_call = None
    assert await ask(sc, "chat", PROMPT) == f"echo: {PROMPT}"
