"""Policy hot reload (atomic swap, in-flight requests keep their policy, a bad file keeps the
last good one), the admin endpoints, and graceful drain."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from aiguard_api.config import ConfigError, compile_policy
from aiguard_api.policy import AIPolicy
from aiguard_sidecar.app import STATE, STORE
from tests.harness.standin import Fault, ProviderStandIn
from tests.sidecar.conftest import (
    SecretVolume,
    Sidecar,
    StartSidecar,
    http_get,
    make_policy,
    wait_for,
)

HELLO: Any = [{"role": "user", "content": "hello"}]


def policy_hash(sc: Sidecar) -> str:
    return sc.server.app[STORE].current.hash


def with_route(doc: dict[str, Any], name: str, models: list[str], provider: str) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    new["spec"]["routes"].insert(
        0, {"name": name, "models": models, "targets": [{"provider": provider}]}
    )
    return new


async def test_policy_change_applies_to_new_requests(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    doc = make_policy(upstream)
    sc = await start_sidecar(doc)
    client = sc.openai()
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="o3-mini", messages=HELLO)
    before = policy_hash(sc)
    sc.write_policy(with_route(doc, "reasoning", ["o3-*"], "openai-main"))
    await wait_for(lambda: policy_hash(sc) != before, what="the reload")
    r = await client.chat.completions.create(model="o3-mini", messages=HELLO)
    assert r.choices[0].message.content == "echo: hello"
    assert sc.sink.last.route == "reasoning"
    assert sc.sink.last.policy_hash == policy_hash(sc)
    assert sc.metric("aiguard_policy_reloads_total") == 1
    assert sc.metric("aiguard_policy_info", policy="team-a/test-policy", hash=policy_hash(sc)) == 1
    assert sc.metric("aiguard_policy_info", policy="team-a/test-policy", hash=before) == 0


async def test_in_flight_stream_finishes_under_the_policy_it_started_with(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    doc = make_policy(upstream)
    sc = await start_sidecar(doc)
    old_hash = policy_hash(sc)
    upstream.fail_next(Fault.slow_stream(0.05), path="/v1/chat/completions")
    upstream.stream_chunks = 8
    stream = await sc.openai().chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
    )
    chunks = stream.__aiter__()
    first = await chunks.__anext__()
    assert first.choices
    # Mid-stream, the route for gpt-* is removed.
    new = copy.deepcopy(doc)
    new["spec"]["routes"] = [r for r in new["spec"]["routes"] if r["name"] != "gpt"]
    sc.write_policy(new)
    await wait_for(lambda: policy_hash(sc) != old_hash, what="the reload")
    rest = [c.choices[0].delta.content or "" async for c in chunks if c.choices]
    assert "".join(rest) == "echo: one two three four five six"
    assert sc.sink.last.policy_hash == old_hash
    assert sc.sink.last.status == 200
    with pytest.raises(openai.NotFoundError):
        await sc.openai().chat.completions.create(model="gpt-4o", messages=HELLO)


async def test_invalid_policy_keeps_the_last_good_one(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    doc = make_policy(upstream)
    sc = await start_sidecar(doc)
    good = policy_hash(sc)
    broken = copy.deepcopy(doc)
    broken["spec"]["routes"][0]["targets"] = [{"provider": "nowhere"}]
    sc.write_policy(broken)
    await wait_for(lambda: sc.metric("aiguard_policy_reload_failures_total") == 1, what="rejection")
    # A second bad version counts once more; re-reading the same bad content does not.
    sc.write_policy("spec: [this is not a policy")
    await wait_for(lambda: sc.metric("aiguard_policy_reload_failures_total") == 2, what="rejection")
    assert policy_hash(sc) == good
    r = await sc.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert r.choices[0].message.content == "echo: hello"
    rejected = [r for r in caplog.records if "reload rejected" in r.getMessage()]
    assert len(rejected) == 2
    assert "unknown provider 'nowhere'" in rejected[0].fields["error"]  # type: ignore[attr-defined]
    # A route mixing API formats is refused when the policy is loaded, not at request time.
    mixed = copy.deepcopy(doc)
    mixed["spec"]["routes"][0]["targets"].append({"provider": "anthropic-main"})
    sc.write_policy(mixed)
    await wait_for(lambda: sc.metric("aiguard_policy_reload_failures_total") == 3, what="rejection")
    assert "mixes OpenAI-format and Anthropic" in caplog.records[-1].fields["error"]  # type: ignore[attr-defined]
    sc.write_policy(with_route(doc, "fixed", ["o3-*"], "openai-main"))
    await wait_for(lambda: policy_hash(sc) != good, what="the good policy")


async def test_compiled_config_in_a_configmap_volume_reloads_on_symlink_swap(
    tmp_path: Path,
    start_sidecar: StartSidecar,
    upstream: ProviderStandIn,
    secrets: SecretVolume,
) -> None:
    mount = tmp_path / "policy-mount"
    mount.mkdir()

    def publish(doc: dict[str, Any], version: int) -> None:
        """What the kubelet does for a ConfigMap: new dir, ..data swapped, key links to it."""
        compiled = compile_policy(AIPolicy.model_validate(doc), secrets_dir=str(secrets.root))
        d = mount / f"..v{version}"
        d.mkdir()
        (d / "config.json").write_text(compiled.to_json())
        (mount / "..tmp").symlink_to(d.name)
        (mount / "..tmp").replace(mount / "..data")
        if not (mount / "config.json").is_symlink():
            (mount / "config.json").symlink_to("..data/config.json")

    doc = make_policy(upstream)
    publish(doc, 1)
    sc = await start_sidecar(None, policy_path=mount / "config.json")
    first = policy_hash(sc)
    assert first == json.loads((mount / "config.json").read_text())["hash"]
    publish(with_route(doc, "reasoning", ["o3-*"], "openai-main"), 2)
    await wait_for(lambda: policy_hash(sc) != first, what="the reload")
    await sc.openai().chat.completions.create(model="o3-mini", messages=HELLO)


async def test_an_unusable_policy_at_startup_fails_the_start(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    doc = make_policy(upstream)
    doc["spec"]["routes"][0]["targets"].append({"provider": "anthropic-main"})
    with pytest.raises(ConfigError, match="mixes OpenAI-format and Anthropic"):
        await start_sidecar(doc)


async def test_admin_endpoints(sidecar: Sidecar) -> None:
    admin = sidecar.server.admin_url
    assert await http_get(f"{admin}/healthz") == (200, "ok\n")
    assert await http_get(f"{admin}/readyz") == (200, "ready\n")
    await sidecar.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    stream = await sidecar.openai().chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True
    )
    _ = [c async for c in stream]
    status, text = await http_get(f"{admin}/metrics")
    assert status == 200
    for name in (
        'aiguard_requests_total{decision="allow",reason="ok"} 2.0',
        "gen_ai_client_operation_duration_seconds_bucket{",
        'gen_ai_client_token_usage_count{aiguard_provider="openai-main"',
        'gen_ai_token_type="output"',
        "gen_ai_server_time_to_first_token_seconds_count{",
        'aiguard_breaker_state{aiguard_provider="openai-main"} 0.0',
        "aiguard_proxy_overhead_seconds_bucket{",
        "aiguard_policy_reload_failures_total 0.0",
        "aiguard_unscanned_content_parts_total",
        "aiguard_failovers_total",
        "aiguard_upstream_errors_total",
    ):
        assert name in text, name


async def test_unscanned_content_parts_are_counted(sidecar: Sidecar) -> None:
    image: Any = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    await sidecar.openai().chat.completions.create(model="gpt-4o", messages=image)
    assert sidecar.sink.last.unscanned == {"image": 1}
    assert sidecar.metric("aiguard_unscanned_content_parts_total", kind="image") == 1


async def test_graceful_drain_finishes_in_flight_streams(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.slow_stream(0.05), path="/v1/chat/completions")
    upstream.stream_chunks = 6
    stream = await sidecar.openai().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "a b c d e f"}], stream=True
    )
    chunks = stream.__aiter__()
    await chunks.__anext__()
    stopping = asyncio.create_task(sidecar.server.stop())
    await wait_for(lambda: sidecar.server.app[STATE].draining, what="the drain to start")
    status, _ = await http_get(f"{sidecar.server.admin_url}/readyz")
    assert status == 503
    rest = [c.choices[0].delta.content or "" async for c in chunks if c.choices]
    assert "".join(rest) == "echo: a b c d e f"
    await stopping
    with pytest.raises(openai.APIConnectionError):
        await sidecar.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
