"""What the sidecar refuses, and how: errors in the caller's own format that each SDK raises as
its own error class, with a message naming the policy rule that decided. Identity, access and
rate limits are the other engineers' modules, exercised here through the pipeline."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import (
    Sidecar,
    StartSidecar,
    http_get,
    make_policy,
    raw_request,
)

HELLO: Any = [{"role": "user", "content": "hello"}]

USERS_POLICY = {
    "access": {
        "identity": {"trustedHeader": {}, "requireUser": True},
        "rules": [
            {
                "name": "gpt-users",
                "subjects": {"users": ["alice"]},
                "models": ["gpt-*"],
                "operations": ["chat", "models"],
            },
            {
                "name": "claude-users",
                "subjects": {"users": ["alice"]},
                "models": ["claude-*"],
                "operations": ["chat"],
            },
        ],
    },
}


async def test_unknown_paths_are_404_in_the_callers_format(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    status, body = await http_get(f"{sidecar.url}/openai/v1/fine_tuning/jobs")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "unknown_path"
    status, body = await http_get(f"{sidecar.url}/anthropic/v1/complete")
    assert status == 404
    assert json.loads(body)["type"] == "error"
    assert json.loads(body)["error"]["type"] == "not_found_error"
    status, _ = await http_get(f"{sidecar.url}/")
    assert status == 404
    with pytest.raises(openai.NotFoundError):
        await sidecar.openai().files.list()
    assert upstream.requests == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\n"
        b"Connection: close\r\n\r\n",
        b"POST http://evil.example/openai/v1/chat/completions HTTP/1.1\r\nHost: evil.example\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    ],
    ids=["absolute-form", "absolute-form-known-path", "connect"],
)
async def test_forward_proxy_requests_are_refused(
    sidecar: Sidecar, upstream: ProviderStandIn, request_bytes: bytes
) -> None:
    status, body = await raw_request(sidecar.server.port, request_bytes)
    assert status == 403
    assert json.loads(body)["error"]["code"] == "proxy_request_refused"
    assert upstream.requests == []


async def test_model_without_route_is_404(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await sidecar.openai().chat.completions.create(model="llama-3-70b", messages=HELLO)
    assert info.value.code == "model_not_routed"
    assert "policy team-a/test-policy" in info.value.message
    assert upstream.requests == []


async def test_request_in_the_wrong_api_format_for_its_route_is_502(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        await sidecar.openai().chat.completions.create(model="claude-sonnet-4-5", messages=HELLO)
    assert info.value.status_code == 502
    assert info.value.code == "wrong_api_format"
    assert "/anthropic/" in info.value.message
    with pytest.raises(anthropic.InternalServerError) as ainfo:
        await sidecar.anthropic().messages.create(model="gpt-4o", max_tokens=5, messages=HELLO)
    assert ainfo.value.status_code == 502
    assert upstream.requests == []


async def test_invalid_json_is_400(sidecar: Sidecar) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sidecar.openai().post("/chat/completions", cast_to=object, content=b"{nope")
    assert info.value.code == "invalid_json"
    with pytest.raises(openai.BadRequestError) as info:
        await sidecar.openai().chat.completions.create(model="", messages=HELLO)
    assert info.value.code == "missing_model"


async def test_body_over_the_limit_is_413(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    doc = make_policy(upstream, guardrails={"input": {"validation": {"maxBodyBytes": 1024}}})
    sc = await start_sidecar(doc)
    big: Any = [{"role": "user", "content": "x" * 2000}]
    with pytest.raises(openai.APIStatusError) as info:
        await sc.openai().chat.completions.create(model="gpt-4o", messages=big)
    assert info.value.status_code == 413
    assert "maxBodyBytes" in info.value.message
    with pytest.raises(anthropic.ContentTooLargeError):
        await sc.anthropic().messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=big)
    assert upstream.requests == []


async def test_identity_required_is_401_and_identity_headers_stay_local(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    sc = await start_sidecar(make_policy(upstream, **USERS_POLICY))
    with pytest.raises(openai.AuthenticationError) as info:
        await sc.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert info.value.code == "identity_failed"
    assert "x-aiguard-user" in info.value.message
    with pytest.raises(anthropic.AuthenticationError):
        await sc.anthropic().messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=HELLO
        )
    assert upstream.requests == []

    alice = {"x-aiguard-user": "alice", "x-aiguard-groups": "dev,ops"}
    r = await sc.openai(default_headers=alice).chat.completions.create(
        model="gpt-4o", messages=HELLO
    )
    assert r.choices[0].message.content == "echo: hello"
    seen = {k.lower() for k in upstream.last_request.headers}
    assert not seen & {"x-aiguard-user", "x-aiguard-groups"}
    principal = sc.sink.last.principal
    assert principal is not None
    assert principal.user == "alice"
    assert principal.source == "header"


async def test_user_outside_the_models_access_rule_is_403(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    sc = await start_sidecar(make_policy(upstream, **USERS_POLICY))
    mallory = sc.openai(default_headers={"x-aiguard-user": "mallory"})
    with pytest.raises(openai.PermissionDeniedError) as info:
        await mallory.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert info.value.code == "access_denied"
    assert "policy team-a/test-policy" in info.value.message
    # Alice may chat but was not granted embeddings.
    alice = sc.openai(default_headers={"x-aiguard-user": "alice"})
    with pytest.raises(openai.PermissionDeniedError) as info:
        await alice.embeddings.create(model="gpt-4o", input="x")
    assert "gpt-users" in info.value.message
    # The model list only shows what the caller may use.
    assert [m.id async for m in alice.models.list()] == ["gpt-4o", "gpt-4o-mini"]
    assert [m.id async for m in mallory.models.list()] == []
    with pytest.raises(anthropic.PermissionDeniedError):
        await sc.anthropic(default_headers={"x-aiguard-user": "mallory"}).messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=HELLO
        )
    assert upstream.requests == []
    assert sc.metric("aiguard_requests_total", decision="deny", reason="access_denied") == 3


async def test_rate_limit_is_429_with_retry_after(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    doc = make_policy(
        upstream,
        rateLimits={
            "limits": [{"name": "per-workload", "scope": "workload", "requestsPerMinute": 1}]
        },
    )
    sc = await start_sidecar(doc)
    await sc.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as info:
        await sc.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert info.value.code == "rate_limited"
    assert "per-workload" in info.value.message
    assert int(info.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.RateLimitError):
        await sc.anthropic().messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=HELLO
        )
    assert len(upstream.requests) == 1


async def test_audit_mode_records_denials_and_changes_nothing(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    doc = make_policy(upstream, mode="audit", **USERS_POLICY)
    sc = await start_sidecar(doc)
    # No user although one is required, and no rule grants this: served anyway.
    r = await sc.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert r.choices[0].message.content == "echo: hello"
    decisions = {d.stage: d for d in sc.sink.last.decisions}
    assert not decisions["identity"].allowed
    assert not decisions["identity"].enforced
    assert not decisions["access"].allowed
    assert not decisions["access"].enforced
    assert sc.metric("aiguard_requests_total", decision="shadow_deny", reason="ok") == 1
