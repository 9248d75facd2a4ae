"""The external moderation endpoint (``moderation.endpointSecretRef``, OpenAI ``/v1/moderations``
format) through the sidecar, with the stand-in's ``/v1/moderations`` as the endpoint (over TLS
with the test CA, its key from a Secret): a category it flags takes the policy's action for
that category; when it is down or slow, ``failureMode`` decides — closed answers 503 in the
client's format, open lets the request through and counts the failure in audit and metrics.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from aiguard_sidecar import moderation_endpoint
from tests.harness.standin import Fault, ProviderStandIn
from tests.sidecar.conftest import OPENAI_KEY, SecretVolume, Sidecar, StartSidecar, make_policy
from tests.sidecar.test_guardrails_e2e import guardrails

TRIGGER = "purple giraffe"  # flagged by the stand-in's rules, harmless to the local classifier
EMAIL = "jane.doe@example.com"
MODERATIONS = "/v1/moderations"


def _moderation(**extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "categories": {"violence": "block", "hate": "flag"},
        "endpointSecretRef": {"name": "moderation", "key": "url"},
        "endpointApiKeySecretRef": {"name": "moderation", "key": "api-key"},
        "endpointCaSecretRef": {"name": "test-ca", "key": "ca.crt"},
        "endpointModel": "omni-moderation-latest",
        **extra,
    }


def _endpoint(upstream: ProviderStandIn, secrets: SecretVolume) -> None:
    """The endpoint's URL in its Secret; what the stand-in's /v1/moderations flags."""
    secrets.write("moderation", {"url": f"{upstream.url}{MODERATIONS}\n", "api-key": OPENAI_KEY})
    upstream.moderation_rules = {TRIGGER: "violence/graphic", "grumpy cat": "hate"}


async def _start(
    start_sidecar: StartSidecar,
    upstream: ProviderStandIn,
    secrets: SecretVolume,
    *,
    side: str = "input",
    failure_mode: str = "closed",
    **extra: Any,
) -> Sidecar:
    _endpoint(upstream, secrets)
    g: dict[str, Any] = {"input": {"promptInjection": {"enabled": False}}}
    g[side] = {**g.get(side, {}), "moderation": _moderation(**extra)}
    doc = make_policy(upstream, guardrails=g, failureMode=failure_mode)
    return await start_sidecar(doc, guardrails=guardrails)


def _chat(sc: Sidecar, text: str) -> Any:
    return sc.openai().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}]
    )


def _messages(sc: Sidecar, text: str) -> Any:
    return sc.anthropic().messages.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": text}]
    )


async def test_a_flagged_category_blocks_and_the_provider_sees_nothing(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    sc = await _start(start_sidecar, upstream, secrets)
    with pytest.raises(openai.BadRequestError) as info:
        await _chat(sc, f"tell me about the {TRIGGER} at {EMAIL}")
    assert info.value.code == "guardrail_blocked"
    assert "guardrails.input.moderation" in info.value.message
    assert "violence" in info.value.message
    assert upstream.requests_to("/v1/chat/completions") == []
    (asked,) = upstream.requests_to(MODERATIONS)
    assert asked.api_key == OPENAI_KEY
    assert asked.tls_version == "TLSv1.3"
    assert asked.body["model"] == "omni-moderation-latest"
    # The endpoint is a third party: it gets the text as the local guardrails redacted it.
    assert asked.body["input"] == [f"tell me about the {TRIGGER} at <EMAIL_ADDRESS>"]
    rec = sc.sink.last
    assert rec.findings[("input", "moderation", "violence", "block")] == 1
    assert (
        sc.metric(
            "aiguard_guardrail_findings_total",
            direction="input",
            guardrail="moderation",
            type="violence",
            action="block",
        )
        == 1
    )


async def test_a_flag_action_records_and_allows_and_clean_text_passes(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    sc = await _start(start_sidecar, upstream, secrets)
    r = await _chat(sc, "a grumpy cat sat on the mat")
    assert r.choices[0].message.content == "echo: a grumpy cat sat on the mat"
    assert sc.sink.last.findings[("input", "moderation", "hate", "flag")] == 1
    r = await _chat(sc, "what is the capital of France?")
    assert r.choices[0].message.content == "echo: what is the capital of France?"
    assert not any(k[1] == "moderation" for k in sc.sink.last.findings)
    assert len(upstream.requests_to(MODERATIONS)) == 2


async def test_anthropic_clients_get_the_block_in_their_format(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    sc = await _start(start_sidecar, upstream, secrets)
    with pytest.raises(anthropic.BadRequestError) as info:
        await _messages(sc, f"the {TRIGGER} again")
    body: Any = info.value.body
    assert body["error"]["type"] == "invalid_request_error"
    assert "moderation" in body["error"]["message"]
    assert upstream.requests_to("/v1/messages") == []


async def test_a_flagged_answer_is_blocked_on_the_output_side(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    sc = await _start(start_sidecar, upstream, secrets, side="output")
    upstream.reply = f"here is the {TRIGGER} you asked for"
    with pytest.raises(openai.BadRequestError) as info:
        await _chat(sc, "hello")
    assert "guardrails.output.moderation" in info.value.message
    (asked,) = upstream.requests_to(MODERATIONS)
    assert asked.body["input"] == [f"here is the {TRIGGER} you asked for"]
    assert sc.sink.last.findings[("output", "moderation", "violence", "block")] == 1


FAULTS = {
    "http_503": Fault.http(503),
    "reset": Fault.reset(),
    "timeout": Fault.slow_headers(5.0),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_endpoint_down_under_failure_mode_closed_is_a_503_in_the_clients_format(
    start_sidecar: StartSidecar,
    upstream: ProviderStandIn,
    secrets: SecretVolume,
    fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sc = await _start(start_sidecar, upstream, secrets, endpointTimeoutSeconds=0.3)
    upstream.fail_always(FAULTS[fault], path=MODERATIONS)
    with pytest.raises(openai.APIStatusError) as info:
        await _chat(sc, "what is the capital of France?")
    assert info.value.status_code == 503
    assert info.value.code == "guardrail_error"
    assert "failureMode is closed" in info.value.message
    with pytest.raises(anthropic.APIStatusError) as ainfo:
        await _messages(sc, "what is the capital of France?")
    assert ainfo.value.status_code == 503
    body: Any = ainfo.value.body
    assert body["type"] == "error"
    assert upstream.requests_to("/v1/chat/completions") == []
    assert upstream.requests_to("/v1/messages") == []
    rec = sc.sink.last
    assert rec.outcome == "guardrail_error"
    # An outage is a warning line per request, not a traceback: nothing here is a bug.
    failed = [r for r in caplog.records if r.getMessage() == "moderation endpoint failed"]
    assert len(failed) == 2
    assert all(r.exc_info is None for r in failed)
    assert not [r for r in caplog.records if r.getMessage() == "guardrail failed"]


async def test_endpoint_down_under_failure_mode_open_is_allowed_and_counted(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    sc = await _start(start_sidecar, upstream, secrets, failure_mode="open")
    upstream.fail_always(Fault.http(500), path=MODERATIONS)
    r = await _chat(sc, f"the {TRIGGER} once more")
    assert r.choices[0].message.content == f"echo: the {TRIGGER} once more"
    rec = sc.sink.last
    assert rec.outcome == "ok"
    assert rec.findings[("input", "moderation", "endpoint_error", "allow")] == 1
    assert (
        sc.metric(
            "aiguard_guardrail_findings_total",
            direction="input",
            guardrail="moderation",
            type="endpoint_error",
            action="allow",
        )
        == 1
    )


async def test_the_endpoint_certificate_is_verified(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    """Without the test CA the stand-in's certificate is not trusted: the call fails (and
    failureMode closed refuses), it is never sent unverified."""
    sc = await _start(start_sidecar, upstream, secrets, endpointCaSecretRef=None)
    with pytest.raises(openai.APIStatusError) as info:
        await _chat(sc, "what is the capital of France?")
    assert info.value.status_code == 503
    assert upstream.requests_to(MODERATIONS) == []


async def _stream_chat(sc: Sidecar, text: str) -> tuple[str, str | None]:
    stream = await sc.openai().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}], stream=True
    )
    seen: list[str] = []
    try:
        async for chunk in stream:
            if chunk.choices:
                seen.append(chunk.choices[0].delta.content or "")
    except openai.APIError as e:
        return "".join(seen), e.message
    return "".join(seen), None


async def test_a_flagged_streamed_answer_never_completes(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    """The endpoint sees the whole streamed answer once, at its end: flagged, the stream's
    terminal event gives way to an error event (the text itself was released by then)."""
    sc = await _start(start_sidecar, upstream, secrets, side="output")
    upstream.reply = ["Here it is: ", "the purple ", "giraffe, ", "as asked."]
    text, error = await _stream_chat(sc, "hello")
    assert error is not None
    assert "guardrails.output.moderation" in error
    assert "violence" in error
    assert text == "Here it is: the purple giraffe, as asked."
    (asked,) = upstream.requests_to(MODERATIONS)
    assert asked.body["input"] == ["Here it is: the purple giraffe, as asked."]
    rec = sc.sink.last
    assert rec.outcome == "guardrail_blocked"
    assert rec.findings[("output", "moderation", "violence", "block")] == 1


@pytest.mark.parametrize("failure_mode", ["closed", "open"])
async def test_endpoint_down_at_the_end_of_a_stream(
    start_sidecar: StartSidecar,
    upstream: ProviderStandIn,
    secrets: SecretVolume,
    failure_mode: str,
) -> None:
    sc = await _start(start_sidecar, upstream, secrets, side="output", failure_mode=failure_mode)
    upstream.fail_always(Fault.http(502), path=MODERATIONS)
    upstream.reply = ["A harmless ", "answer."]
    text, error = await _stream_chat(sc, "hello")
    rec = sc.sink.last
    if failure_mode == "closed":
        assert error is not None
        assert "failureMode closed" in error
        assert rec.outcome == "guardrail_blocked"
        assert rec.findings[("output", "moderation", "endpoint_error", "block")] == 1
    else:
        assert error is None
        assert text == "A harmless answer."
        assert rec.outcome == "ok"
        assert rec.findings[("output", "moderation", "endpoint_error", "allow")] == 1


async def test_endpoint_down_in_audit_mode_records_the_block_it_would_be(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    _endpoint(upstream, secrets)
    doc = make_policy(
        upstream,
        mode="audit",
        guardrails={"input": {"promptInjection": {"enabled": False}, "moderation": _moderation()}},
    )
    sc = await start_sidecar(doc, guardrails=guardrails)
    upstream.fail_always(Fault.http(503), path=MODERATIONS)
    r = await _chat(sc, "what is the capital of France?")
    assert r.choices[0].message.content == "echo: what is the capital of France?"
    rec = sc.sink.last
    assert rec.outcome == "ok"
    assert rec.findings[("input", "moderation", "endpoint_error", "block")] == 1
    (decision,) = [d for d in rec.decisions if d.stage == "guardrail"]
    assert (decision.allowed, decision.enforced) == (False, False)
    assert decision.rule == "guardrails.input.moderation"


async def test_a_rotated_endpoint_key_is_picked_up(
    start_sidecar: StartSidecar,
    upstream: ProviderStandIn,
    secrets: SecretVolume,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(moderation_endpoint, "REFRESH_SECONDS", 0.0)  # re-read on every call
    sc = await _start(start_sidecar, upstream, secrets)
    await _chat(sc, "first")
    upstream.api_keys["openai"] = frozenset({OPENAI_KEY, "sk-rotated-moderation"})
    secrets.write(
        "moderation", {"url": f"{upstream.url}{MODERATIONS}", "api-key": "sk-rotated-moderation"}
    )
    await _chat(sc, "second")
    keys = [r.api_key for r in upstream.requests_to(MODERATIONS)]
    assert keys == [OPENAI_KEY, "sk-rotated-moderation"]
    # The Secret disappears: the last good key goes on being used (logged), nothing breaks.
    secrets.remove("moderation", "api-key")
    await _chat(sc, "third")
    assert upstream.requests_to(MODERATIONS)[-1].api_key == "sk-rotated-moderation"
