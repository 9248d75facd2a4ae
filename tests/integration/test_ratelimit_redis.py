"""Rate limits shared across replicas through a REAL Redis (`redis-server` from Debian).

Each test module starts its own ``redis-server`` on 127.0.0.1 on a free port, in a temporary
directory, without persistence, and stops it afterwards. Missing ``redis-server`` FAILS the
tests (install it with ``apt-get install -y redis-server`` / ``make system-deps``): the
shared limits are a promise of the product and must not silently go untested.

Two :class:`RedisRateLimiter` instances stand for two sidecars of one Deployment. Time is an
injectable clock passed into the Lua scripts, so nothing sleeps.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aiguard_api.policy import RateLimits
from aiguard_sidecar.identity import Principal, Workload
from aiguard_sidecar.ratelimit import (
    CONCURRENCY_RETRY_AFTER_SECONDS,
    REDIS_COOLDOWN_SECONDS,
    Denied,
    Lease,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    build_limiter,
)

T0 = 1_700_000_040.0  # wall-clock-like, on a 5 s bucket boundary
WL = Workload(namespace="team-a", service_account="chatbot", pod="chatbot-1")
ALICE = Principal(workload=WL, user="alice", groups=("eng",), source="jwt")
BOB = Principal(workload=WL, user="bob", groups=("eng",), source="jwt")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def at(self, seconds_after_t0: float) -> None:
        self.now = T0 + seconds_after_t0


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: `apt-get install -y redis-server` "
            "(or `make system-deps`); these tests need a real Redis"
        )
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = _free_port()
    log = (workdir / "redis.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited: {(workdir / 'redis.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer PING within 10 s")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Sidecars:
    """Builds limiters (one per simulated sidecar) and closes them after the test."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.url = url
        self.clock = clock
        self.made: list[RateLimiter] = []

    def __call__(
        self, *limits: dict[str, Any], url: str | None = None, **kw: Any
    ) -> RedisRateLimiter:
        cfg = RateLimits.model_validate(
            {"limits": list(limits), "redis": {"url": url or self.url, "keyPrefix": "t:rl:"}}
        )
        rl = RedisRateLimiter(cfg, url=url or self.url, clock=self.clock, **kw)
        self.made.append(rl)
        return rl


@pytest.fixture
async def sidecar(redis: aioredis.Redis, redis_url: str, clock: Clock) -> AsyncIterator[Sidecars]:
    s = Sidecars(redis_url, clock)
    yield s
    for rl in s.made:
        await rl.close()


async def admit(
    rl: RateLimiter, p: Principal = ALICE, *, model: str = "gpt-4o", est: int = 0
) -> Lease:
    res = await rl.acquire(p, model=model, est_input_tokens=est)
    assert isinstance(res, Lease), res
    return res


async def deny(
    rl: RateLimiter, p: Principal = ALICE, *, model: str = "gpt-4o", est: int = 0
) -> Denied:
    res = await rl.acquire(p, model=model, est_input_tokens=est)
    assert isinstance(res, Denied), res
    return res


RPM = {"name": "per-user", "scope": "user", "requestsPerMinute": 4}


async def test_two_sidecars_share_one_request_limit(sidecar: Sidecars, clock: Clock) -> None:
    a, b = sidecar(RPM), sidecar(RPM)
    clock.at(10)
    await admit(a)
    await admit(b)
    await admit(a)
    await admit(b)
    for rl in (a, b):  # the fifth request is over the shared budget on either sidecar
        d = await deny(rl)
        assert d.limit == "per-user"
        assert d.retry_after == pytest.approx(60.0)  # the four stop counting at 70 s
        assert (
            d.reason
            == "rate limit per-user (4 requests per minute per user) exceeded for user alice"
        )
    await admit(a, BOB)  # another user has their own budget
    clock.at(70)
    await admit(b)


async def test_redis_and_memory_limiters_agree(sidecar: Sidecars, clock: Clock) -> None:
    """Same requests, same clock: the Lua script and the in-memory code decide alike."""
    limits = [
        {"name": "rpm", "scope": "user", "requestsPerMinute": 5},
        {"name": "itpm", "scope": "workload", "inputTokensPerMinute": 1000},
        {"name": "otpm", "scope": "group", "outputTokensPerMinute": 700},
    ]
    shared = sidecar(*limits)
    local = MemoryRateLimiter(RateLimits.model_validate({"limits": limits}), clock=clock)
    script = [
        (0, ALICE, 300, 400),
        (3, BOB, 500, 200),
        (7, ALICE, 400, 0),
        (12, BOB, 100, 300),
        (20, ALICE, 100, 0),
        (33, BOB, 600, 0),
        (61, ALICE, 200, 50),
        (64, BOB, 900, 0),
        (70, ALICE, 1, 0),
        (75, BOB, 50, 0),
        (95, ALICE, 300, 0),
    ]
    denials: set[str] = set()
    for t, who, est, out in script:
        clock.at(t)
        got = [
            await rl.acquire(who, model="gpt-4o", est_input_tokens=est) for rl in (shared, local)
        ]
        if isinstance(got[0], Denied):
            assert isinstance(got[1], Denied), (t, got)
            denials.add(got[0].limit)
            assert (got[0].limit, got[0].reason) == (got[1].limit, got[1].reason)
            assert got[0].retry_after == pytest.approx(got[1].retry_after, abs=1e-6)
        else:
            assert isinstance(got[1], Lease), (t, got)
            for lease in got:
                assert isinstance(lease, Lease)
                await lease.release(input_tokens=est // 2, output_tokens=out)
    assert denials == {"itpm", "otpm"}  # the script exercises denials, not only admissions


async def test_tokens_across_sidecars(sidecar: Sidecars, clock: Clock) -> None:
    itpm = {"name": "tokens", "scope": "workload", "inputTokensPerMinute": 1000}
    otpm = {"name": "out", "scope": "workload", "outputTokensPerMinute": 500}
    a, b = sidecar(itpm, otpm), sidecar(itpm, otpm)
    clock.at(1)
    lease = await admit(a, est=900)
    d = await deny(b, est=200)
    assert d.limit == "tokens"
    assert d.retry_after == pytest.approx(59.0)
    await lease.release(input_tokens=300, output_tokens=600)  # estimate corrected on sidecar a
    d = await deny(b, est=200)  # tokens fit now, but the output budget is overdrawn
    assert d.limit == "out"
    assert d.retry_after == pytest.approx(59.0)
    clock.at(60)
    await admit(b, est=200)


async def test_concurrency_is_shared_and_released(sidecar: Sidecars) -> None:
    conc = {"name": "inflight", "scope": "user", "concurrency": 2}
    a, b = sidecar(conc), sidecar(conc)
    first = await admit(a)
    second = await admit(b)
    d = await deny(a)
    assert d.limit == "inflight"
    assert d.retry_after == CONCURRENCY_RETRY_AFTER_SECONDS
    await first.release(input_tokens=0, output_tokens=0)
    await first.release(input_tokens=0, output_tokens=0)  # idempotent
    third = await admit(b)
    await deny(a)
    for lease in (second, third):
        await lease.release(input_tokens=0, output_tokens=0)
    await admit(a)


async def test_slots_of_a_crashed_sidecar_expire(sidecar: Sidecars, clock: Clock) -> None:
    conc = {"name": "inflight", "scope": "user", "concurrency": 1}
    crashed, survivor = sidecar(conc, lease_ttl=30), sidecar(conc, lease_ttl=30)
    await admit(crashed)  # never released: the sidecar "dies" holding the slot
    await deny(survivor)
    clock.at(29)
    await deny(survivor)
    clock.at(30.001)  # the slot was not refreshed and has expired
    held = await admit(survivor)
    clock.at(100)
    await survivor.refresh_leases()  # a live sidecar keeps its slot past the TTL
    await deny(crashed)
    await held.release(input_tokens=0, output_tokens=0)


async def test_keys_have_ttls_and_the_configured_prefix(
    sidecar: Sidecars, redis: aioredis.Redis
) -> None:
    rl = sidecar(RPM, {"name": "inflight", "scope": "workload", "concurrency": 3})
    lease = await admit(rl)
    keys = sorted(_s(k) for k in await redis.keys("*"))
    assert keys == [
        "t:rl:c|inflight|workload:team-a/chatbot",
        "t:rl:w|inflight|workload:team-a/chatbot",
        "t:rl:w|per-user|user:alice",
    ]
    for k in keys:
        assert 0 < await redis.pttl(k) <= 120_000
    await lease.release(input_tokens=0, output_tokens=0)


async def test_long_scope_values_are_hashed(sidecar: Sidecars, redis: aioredis.Redis) -> None:
    rl = sidecar({"name": "per-model", "scope": "model", "requestsPerMinute": 1})
    await admit(rl, model="m" * 1000)
    await deny(rl, model="m" * 1000)
    [key] = await redis.keys("*")
    assert _s(key).startswith("t:rl:w|per-model|model:sha256=")


async def test_unreachable_redis_fails_open_fast(sidecar: Sidecars, clock: Clock) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    rl = sidecar(RPM, url=dead)
    for _ in range(10):
        lease = await admit(rl)  # admitted although the limit cannot be checked
        await lease.release(input_tokens=1, output_tokens=1)
    assert rl.fail_open_total == 10
    started = time.monotonic()
    await admit(rl)  # within the cooldown: Redis is not even tried
    assert time.monotonic() - started < REDIS_COOLDOWN_SECONDS / 2


async def test_fail_closed_is_available_as_an_option(sidecar: Sidecars) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    rl = sidecar(RPM, url=dead, fail_open=False)
    d = await deny(rl)
    assert d.limit == "redis-unavailable"


async def test_build_limiter_uses_redis_when_configured(
    redis_url: str, redis: aioredis.Redis
) -> None:
    cfg = RateLimits.model_validate({"limits": [RPM], "redis": {"url": redis_url}})
    a, b = build_limiter(cfg, redis_url=redis_url), build_limiter(cfg, redis_url=redis_url)
    try:
        for _ in range(2):
            await admit(a)
            await admit(b)
        await deny(a)
        assert await redis.exists("aiguard:rl:w|per-user|user:alice")
    finally:
        await a.close()
        await b.close()
