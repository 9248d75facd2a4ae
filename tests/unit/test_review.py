"""Which requests are held for human review: the ``review`` guardrail's models, tools and
keywords, read off real OpenAI (chat, Responses) and Anthropic request bodies by the sidecar's
own adapters and decided by the sidecar's guardrails (``guarding.EngineGuardrails``).

The hold itself (collector, AIIncident, approve/deny, expiry) is specified against the real
API server in ``tests/integration/test_review_flow.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aiguard_api import view
from aiguard_api.config import PolicyRef, SidecarConfig, to_view
from aiguard_api.policy import AIPolicySpec
from aiguard_sidecar import hooks, providers, review
from aiguard_sidecar.exchange import Api, Exchange
from aiguard_sidecar.guarding import EngineGuardrails, decision_of
from aiguard_sidecar.guardrails.base import Decision, Finding, Verdict
from aiguard_sidecar.guardrails.review import ReviewGuard, build

QUIET: dict[str, Any] = {
    "pii": {"enabled": False},
    "secrets": {"enabled": False},
    "promptInjection": {"enabled": False},
}
"""Only the guardrail under test runs (each engine build is cached per guardrails section)."""
OUTPUT_OFF: dict[str, Any] = {"pii": {"enabled": False}, "secrets": {"enabled": False}}
REVIEW: dict[str, Any] = {
    "enabled": True,
    "models": ["o1*"],
    "tools": ["transfer_*", "delete_account"],
    "keywords": ["litigation", "wire transfer"],
}


def config(review_cfg: dict[str, Any] | None = None, **inputs: Any) -> view.SidecarConfig:
    spec = AIPolicySpec.model_validate(
        {
            "providers": [{"name": "p", "type": "openai-compatible", "baseURL": "https://x"}],
            "routes": [{"models": ["*"], "targets": [{"provider": "p"}]}],
            "guardrails": {
                "input": {**QUIET, "review": review_cfg or REVIEW, **inputs},
                "output": OUTPUT_OFF,
            },
        }
    )
    return to_view(SidecarConfig(policy=PolicyRef(name="p", namespace="team-a"), spec=spec))


async def check(cfg: view.SidecarConfig, ex: Exchange) -> hooks.GuardDecision:
    g = EngineGuardrails(cfg)
    await g.prepare()
    return await g.check_input(ex)


def openai_chat(body: dict[str, Any]) -> Exchange:
    return providers.OPENAI.parse(Api.CHAT_COMPLETIONS, json.dumps(body).encode())


def openai_responses(body: dict[str, Any]) -> Exchange:
    return providers.OPENAI.parse(Api.RESPONSES, json.dumps(body).encode())


def anthropic(body: dict[str, Any]) -> Exchange:
    return providers.ANTHROPIC.parse(Api.MESSAGES, json.dumps(body).encode())


def fn_tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


TRANSFER_CALL: list[dict[str, Any]] = [
    {"role": "user", "content": "pay the invoice"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "transfer_funds", "arguments": '{"amount": 10}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "done"},
]

LOOKUP_CALL: list[dict[str, Any]] = [
    {"role": "user", "content": "where is my order"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": "{}"},
            }
        ],
    },
]

HELD: list[tuple[str, Exchange, str]] = [
    ("openai: a model under review", openai_chat({"model": "o1-preview", "messages": user("hi")}),
     "model"),
    ("openai: a declared tool", openai_chat({"model": "gpt-4o", "messages": user("pay"),
                                             "tools": [fn_tool("transfer_funds")]}), "tool"),
    ("openai: a tool called earlier in the conversation",
     openai_chat({"model": "gpt-4o", "messages": TRANSFER_CALL}), "tool"),
    ("openai: a legacy function", openai_chat({"model": "gpt-4o", "messages": user("x"),
                                               "functions": [{"name": "delete_account"}]}),
     "tool"),
    ("openai: a keyword, any case", openai_chat({"model": "gpt-4o",
                                                 "messages": user("About the LITIGATION hold")}),
     "keyword"),
    ("openai: a keyword phrase across a line break",
     openai_chat({"model": "gpt-4o", "messages": user("send a wire\ntransfer today")}),
     "keyword"),
    ("openai: a keyword inside a tool result",
     openai_chat({"model": "gpt-4o", "messages": [
         *LOOKUP_CALL, {"role": "tool", "tool_call_id": "call_2",
                        "content": "note: pending litigation"}]}), "keyword"),
    ("responses: a function call item", openai_responses({"model": "gpt-4o", "input": [
        {"type": "function_call", "call_id": "c1", "name": "delete_account", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}), "tool"),
    ("responses: a declared function", openai_responses({
        "model": "gpt-4o", "input": "hello",
        "tools": [{"type": "function", "name": "transfer_money", "parameters": {}}]}), "tool"),
    ("anthropic: a declared tool", anthropic({
        "model": "claude-sonnet-4", "max_tokens": 64, "messages": user("pay"),
        "tools": [{"name": "transfer_funds", "input_schema": {"type": "object"}}]}), "tool"),
    ("anthropic: a tool_use block earlier in the conversation", anthropic({
        "model": "claude-sonnet-4", "max_tokens": 64, "messages": [
            {"role": "user", "content": "close my account"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "delete_account", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]}), "tool"),
    ("anthropic: a keyword in a system prompt block", anthropic({
        "model": "claude-sonnet-4", "max_tokens": 64,
        "system": [{"type": "text", "text": "Legal team: Litigation matters only."}],
        "messages": user("hello")}), "keyword"),
]  # fmt: skip

PASSED: list[tuple[str, Exchange]] = [
    ("openai: nothing under review", openai_chat({"model": "gpt-4o", "messages": user("hi")})),
    ("openai: another tool", openai_chat({"model": "gpt-4o", "messages": user("x"),
                                          "tools": [fn_tool("lookup_order")]})),
    ("openai: a keyword only as part of a longer word",
     openai_chat({"model": "gpt-4o", "messages": user("litigations and wireless transfers")})),
    ("openai: the glob is not a substring match",
     openai_chat({"model": "gpt-o1", "messages": user("hi")})),
    ("anthropic: a tool that is not listed", anthropic({
        "model": "claude-sonnet-4", "max_tokens": 64, "messages": user("x"),
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]})),
]  # fmt: skip


@pytest.mark.parametrize(("case", "ex", "kind"), HELD, ids=[c for c, _, _ in HELD])
async def test_when_a_review_rule_matches_then_the_request_is_held(
    case: str, ex: Exchange, kind: str
) -> None:
    d = await check(config(), ex)

    assert d.verdict is hooks.Verdict.REVIEW
    assert not d.blocked
    assert d.rule == "guardrails.input.review"
    assert d.reason == f"review: {kind}"
    assert ("review", kind, "review") in {(g, t, a) for g, t, a, _ in d.counts}


@pytest.mark.parametrize(("case", "ex"), PASSED, ids=[c for c, _ in PASSED])
async def test_when_no_review_rule_matches_then_the_request_goes_on(
    case: str, ex: Exchange
) -> None:
    d = await check(config(), ex)

    assert d.verdict is hooks.Verdict.ALLOW
    assert d.findings == 0


async def test_when_review_is_disabled_then_nothing_is_held() -> None:
    ex = openai_chat(
        {"model": "o1", "messages": user("litigation"), "tools": [fn_tool("transfer_x")]}
    )

    d = await check(config({**REVIEW, "enabled": False}), ex)

    assert d.verdict is hooks.Verdict.ALLOW


def test_an_enabled_review_that_names_nothing_is_not_built() -> None:
    assert build(config({"enabled": True}).spec.guardrails.input.review, None) is None
    assert (
        build(config({"enabled": True, "keywords": ["  "]}).spec.guardrails.input.review, None)
        is None
    )


async def test_several_matches_are_each_a_finding_without_content() -> None:
    ex = openai_chat(
        {
            "model": "o1-mini",
            "messages": user("litigation, and a wire transfer"),
            "tools": [fn_tool("transfer_funds"), fn_tool("delete_account"), fn_tool("lookup")],
        }
    )

    d = await check(config(), ex)

    assert d.reason == "review: model, tool, keyword"
    assert sorted(d.counts) == [
        ("review", "keyword", "review", 2),
        ("review", "model", "review", 1),
        ("review", "tool", "review", 2),
    ]


async def test_a_detector_with_action_review_holds_the_request_under_its_own_rule() -> None:
    cfg = config({"enabled": False}, deny={"keywords": ["merger"], "action": "review"})

    d = await check(cfg, openai_chat({"model": "gpt-4o", "messages": user("the merger plan")}))

    assert d.verdict is hooks.Verdict.REVIEW
    assert d.rule == "guardrails.input.deny"


async def test_a_held_request_is_already_redacted_so_an_approval_sends_no_personal_data() -> None:
    cfg = config(pii={"entities": {"EMAIL_ADDRESS": "redact"}})
    ex = openai_chat({"model": "gpt-4o", "messages": user("litigation: mail jane@example.com")})

    d = await check(cfg, ex)

    assert d.verdict is hooks.Verdict.REVIEW
    assert ex.modified
    sent = json.dumps(ex.body)
    assert "jane@example.com" not in sent
    assert "<EMAIL_ADDRESS>" in sent


async def test_a_block_is_stronger_than_a_review() -> None:
    cfg = config(deny={"keywords": ["forbidden"], "action": "block"})

    d = await check(cfg, openai_chat({"model": "o1", "messages": user("forbidden litigation")}))

    assert d.blocked
    assert d.rule == "guardrails.input.deny"


def test_output_cannot_be_held_so_an_output_review_is_a_block() -> None:
    v = Verdict(
        decision=Decision.REVIEW,
        findings=[Finding("moderation", "self-harm", 0, 0, 5, 0.9, "review")],
        reason="moderation: self-harm",
    )

    d = decision_of("output", v)

    assert d.blocked
    assert "output cannot be held for human review" in d.reason
    assert decision_of("input", v).verdict is hooks.Verdict.REVIEW


@pytest.mark.parametrize(
    ("ex", "names"),
    [
        (openai_chat({"model": "m", "messages": TRANSFER_CALL, "tools": [fn_tool("a")]}),
         {"a", "transfer_funds"}),
        (openai_chat({"model": "m", "messages": [
            {"role": "assistant", "content": None,
             "function_call": {"name": "legacy_fn", "arguments": "{}"}}]}), {"legacy_fn"}),
        (openai_responses({"model": "m", "input": "x", "tools": [
            {"type": "web_search"}, {"type": "function", "name": "f", "parameters": {}}]}),
         {"web_search", "f"}),
        (anthropic({"model": "m", "max_tokens": 1, "messages": user("x"),
                    "tools": [{"name": "t", "input_schema": {}}]}), {"t"}),
        (openai_chat({"model": "m", "messages": user("no tools")}), set()),
    ],
)  # fmt: skip
def test_tool_names_are_read_from_every_format(ex: Exchange, names: set[str]) -> None:
    assert review.tool_names(ex) == names


def test_the_guardrail_alone_decides_from_model_tools_and_text() -> None:
    g = ReviewGuard(config().spec.guardrails.input.review)

    assert g.model_matches("o1-preview")
    assert not g.model_matches(None)
    assert g.matched_tools(frozenset({"transfer_a", "lookup", "delete_account"})) == [
        "delete_account",
        "transfer_a",
    ]
