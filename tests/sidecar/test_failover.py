"""Routing and failover against stand-ins that fail on demand: the request moves to the next
provider on connect errors, timeouts, 5xx and 429; breakers open and recover; a stream that has
reached the client is never retried."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from aiguard_sidecar.app import STORE
from aiguard_sidecar.routing import Breaker, BreakerState
from tests.harness.standin import Fault, ProviderStandIn
from tests.sidecar.conftest import Sidecar, StartSidecar, make_policy, wait_for

HELLO: Any = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"


def breaker(sc: Sidecar, provider: str) -> Breaker:
    return sc.server.app[STORE].current.providers[provider].breaker


def path_of(sc: Sidecar) -> list[str]:
    return [f"{a.provider}:{a.outcome}" for a in sc.sink.last.attempts]


async def ask(sc: Sidecar) -> str | None:
    r = await sc.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    return r.choices[0].message.content


async def test_primary_5xx_fails_over_to_the_secondary(
    sidecar: Sidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> None:
    upstream.fail_next(503, path=CHAT)
    assert await ask(sidecar) == "from backup"
    assert path_of(sidecar) == ["openai-main:5xx", "openai-backup:ok"]
    assert sidecar.sink.last.provider == "openai-backup"
    assert len(upstream.requests) == 1
    assert len(backup.requests) == 1
    labels = {"aiguard_route": "gpt", "aiguard_provider": "openai-main", "cause": "5xx"}
    assert sidecar.metric("aiguard_failovers_total", **labels) == 1


async def test_breaker_opens_after_repeated_failures_then_recovers(
    sidecar: Sidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> None:
    upstream.fail_always(500, path=CHAT)
    for _ in range(2):  # breakerFailureThreshold: 2
        assert await ask(sidecar) == "from backup"
    main = breaker(sidecar, "openai-main")
    assert main.state is BreakerState.OPEN
    assert sidecar.metric("aiguard_breaker_state", aiguard_provider="openai-main") == 2

    # While open, the primary is skipped without being asked.
    assert await ask(sidecar) == "from backup"
    assert len(upstream.requests) == 2
    assert path_of(sidecar) == ["openai-main:breaker_open", "openai-backup:ok"]

    # The primary heals; after breakerOpenSeconds one probe goes to it and closes the breaker.
    upstream.clear_faults()
    await wait_for(lambda: main.retry_after() == 0, what="the breaker's open period")
    assert await ask(sidecar) == "echo: hello"
    assert main.state is BreakerState.CLOSED
    assert sidecar.metric("aiguard_breaker_state", aiguard_provider="openai-main") == 0
    assert path_of(sidecar) == ["openai-main:ok"]


async def test_failed_probe_reopens_the_breaker(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    upstream.fail_always(500, path=CHAT)
    for _ in range(2):
        await ask(sidecar)
    main = breaker(sidecar, "openai-main")
    await wait_for(lambda: main.retry_after() == 0, what="the breaker's open period")
    assert await ask(sidecar) == "from backup"  # the probe failed over
    assert main.state is BreakerState.OPEN
    assert main.retry_after() > 0


async def test_connection_reset_fails_over(sidecar: Sidecar, upstream: ProviderStandIn) -> None:
    upstream.fail_next(Fault.reset(), path=CHAT)
    assert await ask(sidecar) == "from backup"
    assert path_of(sidecar) == ["openai-main:connect", "openai-backup:ok"]


async def test_timeout_fails_over(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> None:
    doc = make_policy(upstream, backup)
    doc["spec"]["providers"][0]["timeouts"] = {"readSeconds": 0.3}
    sc = await start_sidecar(doc)
    upstream.fail_next(Fault.slow_headers(5.0), path=CHAT)
    assert await ask(sc) == "from backup"
    assert path_of(sc) == ["openai-main:timeout", "openai-backup:ok"]
    assert sc.sink.last.latency_seconds < 3


async def test_429_everywhere_relays_the_last_rate_limit_with_retry_after(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> None:
    sc = await start_sidecar(make_policy(upstream, backup, resilience={"maxAttempts": 2}))
    upstream.fail_next(Fault.rate_limited(3), path=CHAT)
    backup.fail_next(Fault.rate_limited(7), path=CHAT)
    with pytest.raises(openai.RateLimitError) as info:
        await ask(sc)
    assert info.value.response.headers["retry-after"] == "7"
    assert path_of(sc) == ["openai-main:429", "openai-backup:429"]
    assert sc.sink.last.outcome == "upstream_rate_limited"


async def test_attempts_wrap_around_the_targets_up_to_max_attempts(
    sidecar: Sidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.rate_limited(1), path=CHAT)
    backup.fail_next(502, path=CHAT)
    assert await ask(sidecar) == "echo: hello"  # maxAttempts 3: main, backup, main
    assert path_of(sidecar) == ["openai-main:429", "openai-backup:5xx", "openai-main:ok"]


async def test_no_failover_for_failures_not_listed_in_failover_on(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> None:
    doc = make_policy(upstream, backup, resilience={"failoverOn": ["connect", "timeout"]})
    sc = await start_sidecar(doc)
    upstream.fail_next(503, path=CHAT)
    with pytest.raises(openai.InternalServerError) as info:
        await ask(sc)
    assert info.value.status_code == 503
    assert backup.requests == []


async def test_retry_budget_of_zero_disables_failover(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> None:
    doc = make_policy(upstream, backup, resilience={"retryBudgetPercent": 0})
    sc = await start_sidecar(doc)
    upstream.fail_next(Fault.reset(), path=CHAT)
    with pytest.raises(openai.InternalServerError) as info:
        await ask(sc)
    assert info.value.status_code == 502
    assert "retry budget" in info.value.message
    assert backup.requests == []


async def test_a_stream_that_reached_the_client_is_never_retried(
    sidecar: Sidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.truncate_stream(after_chunks=1), path=CHAT)
    stream = await sidecar.openai().chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True
    )
    received: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as info:
        await consume()
    assert "broke the stream" in info.value.message
    assert received[-1]
    assert "echo: hello".startswith("".join(received))
    assert backup.requests == []
    assert sidecar.sink.last.outcome == "upstream_stream_broken"


async def test_a_stream_that_fails_before_its_first_byte_fails_over(
    sidecar: Sidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> None:
    upstream.fail_next(Fault.reset(), path=CHAT)
    stream = await sidecar.openai().chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "from backup"
    assert backup.last_request.stream


async def test_every_breaker_open_is_503_with_retry_after(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    upstream.fail_always(500, path="/v1/messages")
    client = sidecar.anthropic()
    for _ in range(2):  # a single-target route: each failure is relayed as it came
        with pytest.raises(anthropic.InternalServerError):
            await client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=HELLO)
    with pytest.raises(anthropic.ServiceUnavailableError) as info:
        await client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=HELLO)
    assert info.value.response.headers["retry-after"] == "1"
    assert "circuit breaker" in info.value.message
    assert len(upstream.requests) == 2


async def test_a_timeout_with_nowhere_to_fail_over_is_504(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    doc = make_policy(upstream)
    doc["spec"]["providers"][1]["timeouts"] = {"readSeconds": 0.2}  # anthropic-main
    sc = await start_sidecar(doc)
    upstream.fail_next(Fault.slow_headers(5.0), times=2, path="/v1/messages")
    with pytest.raises(anthropic.GatewayTimeoutError) as info:
        await sc.anthropic().messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=HELLO
        )
    assert "timed out" in info.value.message
    # maxAttempts 3 on one target: the breaker (threshold 2) stops the third.
    assert [a.outcome for a in sc.sink.last.attempts] == ["timeout", "timeout", "breaker_open"]
