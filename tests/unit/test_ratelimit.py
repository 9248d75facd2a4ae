"""In-memory rate limits: sliding windows, token accounting, concurrency and Retry-After.

Time is an injectable clock; nothing sleeps. The clock starts on a bucket boundary (``T0``),
and buckets are 5 s, so the arithmetic in the expectations can be followed by hand: a request
made at ``t`` stops counting at the start of the bucket one minute after its own.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiguard_api.policy import RateLimits
from aiguard_sidecar.identity import Principal, Workload
from aiguard_sidecar.ratelimit import (
    BUCKET_SECONDS,
    BUCKETS,
    CONCURRENCY_RETRY_AFTER_SECONDS,
    WINDOW_SECONDS,
    Denied,
    Lease,
    MemoryRateLimiter,
    RedisRateLimiter,
    bucket_wait,
    build_limiter,
)

T0 = 1000 * WINDOW_SECONDS
WL = Workload(namespace="team-a", service_account="chatbot", pod="chatbot-1")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def at(self, seconds_after_t0: float) -> None:
        self.now = T0 + seconds_after_t0


def who(name: str | None, *groups: str) -> Principal:
    return Principal(workload=WL, user=name, groups=groups, source="jwt" if name else "workload")


ALICE, BOB = who("alice", "eng"), who("bob", "eng", "ml")


def limiter(clock: Clock, *limits: dict[str, Any]) -> MemoryRateLimiter:
    return MemoryRateLimiter(RateLimits.model_validate({"limits": list(limits)}), clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def admit(rl: MemoryRateLimiter, p: Principal, model: str = "gpt-4o", est: int = 0) -> Lease:
    res = await rl.acquire(p, model=model, est_input_tokens=est)
    assert isinstance(res, Lease), res
    return res


async def deny(rl: MemoryRateLimiter, p: Principal, model: str = "gpt-4o", est: int = 0) -> Denied:
    res = await rl.acquire(p, model=model, est_input_tokens=est)
    assert isinstance(res, Denied), res
    return res


# --------------------------------------------------------------------------- requests


async def test_requests_per_minute_and_exact_retry_after(clock: Clock) -> None:
    rl = limiter(clock, {"name": "per-user", "scope": "user", "requestsPerMinute": 3})
    clock.at(10)
    for _ in range(3):
        await admit(rl, ALICE)
    d = await deny(rl, ALICE)
    # The three were made in bucket [10 s, 15 s): they stop counting at 70 s.
    assert d == Denied(
        "per-user",
        pytest.approx(60.0),  # type: ignore[arg-type]
        "rate limit per-user (3 requests per minute per user) exceeded for user alice",
    )
    clock.at(69.9)
    assert (await deny(rl, ALICE)).retry_after == pytest.approx(0.1)
    clock.at(70)
    await admit(rl, ALICE)


async def test_the_window_slides_instead_of_resetting(clock: Clock) -> None:
    rl = limiter(clock, {"name": "rpm", "scope": "user", "requestsPerMinute": 3})
    for t in (0, 20, 40):
        clock.at(t)
        await admit(rl, ALICE)
    clock.at(50)
    assert (await deny(rl, ALICE)).retry_after == pytest.approx(10.0)
    clock.at(60)  # only the request made at 0 s has slid out
    await admit(rl, ALICE)
    assert (await deny(rl, ALICE)).retry_after == pytest.approx(20.0)
    clock.at(80)
    await admit(rl, ALICE)


async def test_a_request_counts_for_55_to_60_seconds(clock: Clock) -> None:
    rl = limiter(clock, {"name": "rpm", "scope": "user", "requestsPerMinute": 1})
    clock.at(4.9)  # late in bucket [0 s, 5 s)
    await admit(rl, ALICE)
    clock.at(59.99)
    assert (await deny(rl, ALICE)).retry_after == pytest.approx(0.01)
    clock.at(60)
    await admit(rl, ALICE)


async def test_old_windows_are_forgotten(clock: Clock) -> None:
    rl = limiter(clock, {"name": "rpm", "scope": "user", "requestsPerMinute": 2})
    await admit(rl, ALICE)
    await admit(rl, ALICE)
    clock.at(2 * WINDOW_SECONDS)
    await admit(rl, ALICE)
    await admit(rl, ALICE)


async def test_denied_requests_are_not_counted(clock: Clock) -> None:
    rl = limiter(clock, {"name": "rpm", "scope": "user", "requestsPerMinute": 1})
    await admit(rl, ALICE)
    for _ in range(5):
        await deny(rl, ALICE)
    clock.at(WINDOW_SECONDS)
    await admit(rl, ALICE)


# --------------------------------------------------------------------------- tokens


async def test_input_tokens_estimated_then_corrected_at_release(clock: Clock) -> None:
    rl = limiter(clock, {"name": "itpm", "scope": "workload", "inputTokensPerMinute": 1000})
    clock.at(10)
    first = await admit(rl, ALICE, est=800)
    d = await deny(rl, BOB, est=300)  # same workload
    assert d.limit == "itpm"
    assert d.retry_after == pytest.approx(60.0)  # when the 800 stop counting
    assert "1000 input tokens per minute per workload" in d.reason
    assert "workload team-a/chatbot" in d.reason
    await first.release(input_tokens=200, output_tokens=0)  # the estimate was high
    await admit(rl, BOB, est=300)
    await admit(rl, BOB, est=500)
    await deny(rl, BOB, est=1)


async def test_input_correction_lands_in_the_window_that_was_charged(clock: Clock) -> None:
    rl = limiter(clock, {"name": "itpm", "scope": "user", "inputTokensPerMinute": 1000})
    clock.at(50)
    lease = await admit(rl, ALICE, est=1000)
    clock.at(70)  # a later bucket; the charge still counts (until 110 s)
    await deny(rl, ALICE, est=500)
    await lease.release(input_tokens=100, output_tokens=0)
    await admit(rl, ALICE, est=500)


async def test_output_tokens_are_charged_at_release_and_checked_next_time(clock: Clock) -> None:
    rl = limiter(clock, {"name": "otpm", "scope": "user", "outputTokensPerMinute": 500})
    clock.at(10)
    lease = await admit(rl, ALICE)
    await admit(rl, ALICE)  # output unknown until release: admitted
    await lease.release(input_tokens=0, output_tokens=600)
    d = await deny(rl, ALICE)
    assert d.retry_after == pytest.approx(60.0)  # overdrawn until the 600 stop counting
    assert d.limit == "otpm"
    await admit(rl, BOB)  # another user is unaffected


async def test_a_request_larger_than_the_budget_needs_an_unused_budget(clock: Clock) -> None:
    rl = limiter(clock, {"name": "itpm", "scope": "user", "inputTokensPerMinute": 1000})
    await admit(rl, ALICE, est=5000)  # never fits, so admitted on an empty budget...
    d = await deny(rl, ALICE, est=1)  # ...and charged in full
    assert d.retry_after == pytest.approx(60.0)
    await deny(rl, ALICE, est=5000)


# --------------------------------------------------------------------------- concurrency


async def test_concurrency_is_held_until_release(clock: Clock) -> None:
    rl = limiter(clock, {"name": "inflight", "scope": "user", "concurrency": 2})
    a = await admit(rl, ALICE)
    b = await admit(rl, ALICE)
    d = await deny(rl, ALICE)
    assert d == Denied(
        "inflight",
        CONCURRENCY_RETRY_AFTER_SECONDS,
        "rate limit inflight (2 concurrent requests per user) exceeded for user alice",
    )
    await a.release(input_tokens=0, output_tokens=0)
    c = await admit(rl, ALICE)
    await a.release(input_tokens=0, output_tokens=0)  # idempotent: frees nothing more
    assert a.released
    await deny(rl, ALICE)
    await b.release(input_tokens=0, output_tokens=0)
    await c.release(input_tokens=0, output_tokens=0)
    await admit(rl, ALICE)


async def test_a_lease_dropped_without_release_frees_its_slot(clock: Clock) -> None:
    rl = limiter(clock, {"name": "inflight", "scope": "user", "concurrency": 1})
    lease: Lease | None = await admit(rl, ALICE)
    await deny(rl, ALICE)
    del lease
    gc.collect()
    await admit(rl, ALICE)


# --------------------------------------------------------------------------- scopes


async def test_user_scope_falls_back_to_the_workload(clock: Clock) -> None:
    rl = limiter(clock, {"name": "rpm", "scope": "user", "requestsPerMinute": 1})
    await admit(rl, who(None))
    d = await deny(rl, who(None))
    assert d.reason.endswith("for workload team-a/chatbot")
    await admit(rl, ALICE)  # a user has their own budget


async def test_group_scope_counts_every_group(clock: Clock) -> None:
    rl = limiter(clock, {"name": "per-group", "scope": "group", "requestsPerMinute": 2})
    await admit(rl, ALICE)  # eng: 1
    await admit(rl, BOB)  # eng: 2, ml: 1
    d = await deny(rl, who("carol", "ml", "eng"))
    assert d.reason.endswith("for group eng")
    await admit(rl, who("dave", "ml"))  # ml: 2
    await deny(rl, who("erin", "ml"))
    await admit(rl, who("frank"))  # no groups: not counted by a group limit


async def test_model_scope_and_model_patterns(clock: Clock) -> None:
    rl = limiter(
        clock,
        {"name": "per-model", "scope": "model", "models": ["gpt-4o*"], "requestsPerMinute": 1},
    )
    await admit(rl, ALICE, model="gpt-4o")
    await deny(rl, BOB, model="gpt-4o")
    await admit(rl, BOB, model="gpt-4o-mini")
    for _ in range(5):
        lease = await admit(rl, BOB, model="claude-3-5-sonnet")  # not covered
        assert lease.limits == ()


async def test_every_matching_limit_must_admit_and_the_longest_wait_is_reported(
    clock: Clock,
) -> None:
    rl = limiter(
        clock,
        {"name": "rpm", "scope": "user", "requestsPerMinute": 100},
        {"name": "itpm", "scope": "user", "inputTokensPerMinute": 100},
        {"name": "burst", "scope": "user", "requestsPerMinute": 2},
    )
    clock.at(30)
    lease = await admit(rl, ALICE, est=80)
    assert lease.limits == ("rpm", "itpm", "burst")
    clock.at(40)
    await admit(rl, ALICE, est=10)
    clock.at(45)
    d = await deny(rl, ALICE, est=5)  # tokens fit (95); burst waits for the 30 s request
    assert d.limit == "burst"
    assert d.retry_after == pytest.approx(45.0)
    d = await deny(rl, ALICE, est=95)  # tokens must wait for both earlier requests
    assert d.limit == "itpm"
    assert d.retry_after == pytest.approx(55.0)


async def test_a_denial_charges_no_limit(clock: Clock) -> None:
    rl = limiter(
        clock,
        {"name": "rpm", "scope": "user", "requestsPerMinute": 10},
        {"name": "inflight", "scope": "user", "concurrency": 1},
    )
    held = await admit(rl, ALICE)
    for _ in range(20):
        await deny(rl, ALICE)
    await held.release(input_tokens=0, output_tokens=0)
    for _ in range(9):
        (await admit(rl, ALICE)).limits  # noqa: B018
    # 10 admitted in total (the first + 9): the 20 denials were not counted


async def test_stale_keys_are_swept(clock: Clock) -> None:
    rl = limiter(clock, {"name": "rpm", "scope": "user", "requestsPerMinute": 5})
    for i in range(100):
        await admit(rl, who(f"user-{i}"))
    clock.at(3 * WINDOW_SECONDS)
    await admit(rl, ALICE)
    assert len(rl._states) == 1


# --------------------------------------------------------------------------- builder, maths


async def test_build_limiter() -> None:
    cfg = {"limits": [{"name": "rpm", "scope": "user", "requestsPerMinute": 1}]}
    assert isinstance(
        build_limiter(RateLimits.model_validate(cfg), redis_url=None), MemoryRateLimiter
    )
    shared = RateLimits.model_validate({**cfg, "redis": {"url": "redis://127.0.0.1:1"}})
    with pytest.raises(ValueError, match="no Redis URL"):
        build_limiter(shared, redis_url=None)
    rl = build_limiter(shared, redis_url="redis://127.0.0.1:1")
    assert isinstance(rl, RedisRateLimiter)
    await rl.close()


@given(
    ring=st.lists(st.integers(0, 5000), min_size=BUCKETS, max_size=BUCKETS),
    n=st.integers(BUCKETS, 10**9),
    offset=st.floats(0, BUCKET_SECONDS, exclude_max=True),
    limit=st.integers(1, 20_000),
    cost=st.integers(0, 30_000),
)
def test_retry_after_is_exact(
    ring: list[int], n: int, offset: float, limit: int, cost: int
) -> None:
    """Waiting ``retry_after`` is enough, and 10 ms less is not (absent other traffic)."""
    now = n * BUCKET_SECONDS + offset
    c = min(cost, limit)

    def usage_at(t: float) -> int:
        # buckets n-B+1..n were made before now; those a minute old at ``t`` no longer count
        first_live = int(t / BUCKET_SECONDS + 1e-6) - BUCKETS + 1
        return sum(ring[j % BUCKETS] for j in range(max(first_live, n - BUCKETS + 1), n + 1))

    wait = bucket_wait(ring, sum(ring), n, cost, limit, now)
    if wait == 0:
        assert sum(ring) + c <= limit
        return
    assert sum(ring) + c > limit
    assert wait <= WINDOW_SECONDS
    assert usage_at(now + wait) + c <= limit
    if wait > 0.01:
        assert usage_at(now + wait - 0.01) + c > limit
