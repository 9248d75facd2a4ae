"""The guardrail hooks as a plug-in sees them (input block, input and stream output rewrites
through segment locators, audit mode), and OpenAI-compatible servers (plain HTTP in-cluster,
keyless)."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai
import pytest

from aiguard_api.config import SidecarConfig
from aiguard_sidecar.exchange import Exchange, ResponseInfo, StreamEvent
from aiguard_sidecar.hooks import ALLOW, GuardDecision, Guardrails, StreamGuard, Verdict
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import OPENAI_KEY, StartSidecar, make_policy


class _Redact:
    """Replaces "secret" with "[x]" in output deltas."""

    def on_event(self, event: StreamEvent) -> GuardDecision:
        for d in event.deltas:
            if "secret" in d.text:
                event.set_text(d, d.text.replace("secret", "[x]"))
        return ALLOW

    def on_end(self) -> GuardDecision:
        return ALLOW


class ToyGuardrails:
    """Blocks prompts containing "forbidden", redacts "alice@example.com" in prompts and
    "secret" in outputs. Stands in for the guardrails issue's registry."""

    def __init__(self, cfg: SidecarConfig) -> None:
        self.cfg = cfg

    async def check_input(self, exchange: Exchange) -> GuardDecision:
        for seg in exchange.segments:
            if "forbidden" in seg.text:
                return GuardDecision(Verdict.BLOCK, "guardrails.input.deny", "keyword", 1)
            if "alice@example.com" in seg.text:
                exchange.set_text(seg, seg.text.replace("alice@example.com", "<EMAIL_ADDRESS>"))
        return ALLOW

    async def check_output(self, exchange: Exchange, response: ResponseInfo) -> GuardDecision:
        for seg in response.segments:
            if "secret" in seg.text:
                response.set_text(seg, seg.text.replace("secret", "[x]"))
        return ALLOW

    def output_stream(self, exchange: Exchange) -> StreamGuard | None:
        return _Redact()

    async def close(self) -> None:
        return None


def toy(cfg: SidecarConfig) -> Guardrails:
    return ToyGuardrails(cfg)


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def test_input_block_is_400_in_each_format(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    sc = await start_sidecar(make_policy(upstream), guardrails=toy)
    with pytest.raises(openai.BadRequestError) as info:
        await sc.openai().chat.completions.create(model="gpt-4o", messages=user("a forbidden word"))
    assert info.value.code == "guardrail_blocked"
    assert "guardrails.input.deny" in info.value.message
    with pytest.raises(anthropic.BadRequestError):
        await sc.anthropic().messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=user("forbidden")
        )
    assert upstream.requests == []


async def test_rewrites_reach_the_provider_and_the_client(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    sc = await start_sidecar(make_policy(upstream), guardrails=toy)
    r = await sc.openai().chat.completions.create(
        model="gpt-4o", messages=user("mail alice@example.com the secret")
    )
    assert upstream.last_request.texts == ("mail <EMAIL_ADDRESS> the secret",)
    assert r.choices[0].message.content == "echo: mail <EMAIL_ADDRESS> the [x]"
    stream = await sc.openai().chat.completions.create(
        model="gpt-4o", messages=user("a secret here"), stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: a [x] here"


async def test_audit_mode_leaves_traffic_unchanged(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    sc = await start_sidecar(make_policy(upstream, mode="audit"), guardrails=toy)
    r = await sc.openai().chat.completions.create(model="gpt-4o", messages=user("forbidden secret"))
    assert r.choices[0].message.content == "echo: forbidden secret"
    (decision,) = [d for d in sc.sink.last.decisions if d.stage == "guardrail"]
    assert (decision.allowed, decision.enforced, decision.rule) == (
        False,
        False,
        "guardrails.input.deny",
    )
    stream = await sc.openai().chat.completions.create(
        model="gpt-4o", messages=user("secret"), stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: secret"


async def test_a_failing_guardrail_fails_closed_by_default(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    class Broken(ToyGuardrails):
        async def check_input(self, exchange: Exchange) -> GuardDecision:
            raise RuntimeError("model not loaded")

    sc = await start_sidecar(make_policy(upstream), guardrails=Broken)
    with pytest.raises(openai.InternalServerError) as info:
        await sc.openai().chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert info.value.status_code == 503
    assert info.value.code == "guardrail_error"
    opened = await start_sidecar(make_policy(upstream, failureMode="open"), guardrails=Broken)
    r = await opened.openai().chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert r.choices[0].message.content == "echo: hi"


class _Buggy:
    """A stream guard with a bug: it raises on its ``fail_at``-th event, or at the end."""

    def __init__(self, fail_at: int | None) -> None:
        self.fail_at = fail_at
        self.events = 0

    def on_event(self, event: StreamEvent) -> GuardDecision:
        self.events += 1
        if self.events == self.fail_at:
            raise RuntimeError("bug in the stream guard")
        return ALLOW

    def on_end(self) -> GuardDecision:
        if self.fail_at is None:
            raise RuntimeError("bug at the end of the stream guard")
        return ALLOW


def buggy(fail_at: int | None) -> Any:
    class Buggy(ToyGuardrails):
        def output_stream(self, exchange: Exchange) -> StreamGuard | None:
            return _Buggy(fail_at)

    return Buggy


async def _read(stream: Any) -> str:
    seen: list[str] = []
    async for chunk in stream:
        if chunk.choices:
            seen.append(chunk.choices[0].delta.content or "")
    return "".join(seen)


@pytest.mark.parametrize("fail_at", [1, 3, None], ids=["first-event", "mid-stream", "at-end"])
@pytest.mark.parametrize("failure_mode", ["closed", "open"])
async def test_a_stream_guard_that_raises_ends_the_stream_with_an_error_event(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, fail_at: int | None, failure_mode: str
) -> None:
    """Not a guardrail's error (its failureMode decides that, inside the guard) but the guard's
    own: what it held back cannot be trusted, so in either failureMode the client's stream
    ends with an error event, never hangs and never completes as if whole, and the audit event
    says why."""
    upstream.reply = ["one ", "two ", "three ", "four"]
    sc = await start_sidecar(
        make_policy(upstream, failureMode=failure_mode), guardrails=buggy(fail_at)
    )
    stream = await sc.openai().chat.completions.create(
        model="gpt-4o", messages=user("count"), stream=True
    )
    with pytest.raises(openai.APIError) as info:
        await asyncio.wait_for(_read(stream), 30)
    assert "the output guardrails failed on this stream" in info.value.message
    rec = sc.sink.last
    assert rec.outcome == "guardrail_error"
    (decision,) = [d for d in rec.decisions if d.stage == "guardrail"]
    assert (decision.allowed, decision.enforced, decision.rule) == (
        False,
        True,
        "guardrails.output",
    )
    assert "RuntimeError" in decision.reason
    # the sidecar is unharmed
    r = await sc.openai().chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert r.choices[0].message.content == "one two three four"


@pytest.mark.parametrize("fail_at", [1, 3, None], ids=["first-event", "mid-stream", "at-end"])
async def test_in_audit_mode_a_failing_stream_guard_is_recorded_and_the_stream_goes_on(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, fail_at: int | None
) -> None:
    upstream.reply = ["one ", "two ", "three ", "four"]
    sc = await start_sidecar(make_policy(upstream, mode="audit"), guardrails=buggy(fail_at))
    stream = await sc.openai().chat.completions.create(
        model="gpt-4o", messages=user("count"), stream=True
    )
    assert await asyncio.wait_for(_read(stream), 30) == "one two three four"
    rec = sc.sink.last
    assert rec.outcome == "ok"
    (decision,) = [d for d in rec.decisions if d.stage == "guardrail"]
    assert (decision.allowed, decision.enforced) == (False, False)
    assert "RuntimeError" in decision.reason


async def test_openai_compatible_server_over_plain_http(
    start_sidecar: StartSidecar, secrets: Any
) -> None:
    async with ProviderStandIn(openai_keys=[OPENAI_KEY]) as vllm:  # no TLS: in-cluster
        doc = make_policy(vllm)
        doc["spec"]["providers"] = [
            {
                "name": "vllm",
                "type": "openai-compatible",
                "baseURL": vllm.openai_base_url,
                "allowPlaintext": True,
                "apiKeySecretRef": {"name": "openai"},
            },
            {
                "name": "keyless",
                "type": "openai-compatible",
                "baseURL": vllm.openai_base_url,
                "allowPlaintext": True,
            },
        ]
        doc["spec"]["routes"] = [
            {"name": "llama", "models": ["llama-*"], "targets": [{"provider": "vllm"}]},
            {"name": "local", "models": ["local-*"], "targets": [{"provider": "keyless"}]},
        ]
        sc = await start_sidecar(doc)
        r = await sc.openai().chat.completions.create(model="llama-3-8b", messages=user("hi"))
        assert r.choices[0].message.content == "echo: hi"
        assert vllm.last_request.api_key == OPENAI_KEY
        assert sc.sink.last.tls_version is None
        # A keyless provider gets no credential at all, least of all the client's.
        with pytest.raises(openai.InternalServerError):  # the stand-in insists on a key
            await sc.openai().chat.completions.create(model="local-model", messages=user("hi"))
        assert vllm.last_request.api_key is None
