"""Routes, breakers, the retry budget and one request's attempt plan, with a fake clock."""

from __future__ import annotations

import pytest

from aiguard_api.policy import Resilience, Route, RouteTarget
from aiguard_sidecar.routing import (
    MIN_RETRIES_PER_WINDOW,
    AttemptPlan,
    Breaker,
    Breakers,
    BreakerState,
    Failure,
    RetryBudget,
    RouteTable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def route(name: str, models: list[str], *providers: str) -> Route:
    return Route(name=name, models=models, targets=[RouteTarget(provider=p) for p in providers])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "exact"),
        ("gpt-4o-mini", "gpt"),
        ("gpt-", "gpt"),
        ("claude-3", "claude"),
        ("o1", "single-char"),
        ("llama", None),
        ("GPT-4O", None),  # case-sensitive, as model_matches is
    ],
)
def test_first_matching_route_wins(model: str, expected: str | None) -> None:
    table = RouteTable(
        [
            route("exact", ["gpt-4o"], "a"),
            route("gpt", ["gpt-*"], "a"),
            route("claude", ["claude-[0-9]*"], "b"),
            route("single-char", ["o?"], "a"),
        ]
    )
    found = table.match(model)
    assert (found.name if found else None) == expected
    assert table.match(model) is found  # memoised


def test_model_list_is_the_exact_names() -> None:
    table = RouteTable(
        [route("r", ["gpt-4o", "gpt-*", "o1"], "a"), route("s", ["o1", "claude"], "b")]
    )
    assert table.exact_models() == ["gpt-4o", "o1", "claude"]


def test_breaker_closed_open_half_open_closed() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    b = Breaker(
        "p", threshold=3, open_seconds=10, clock=clock, on_change=lambda _, s: changes.append(s)
    )
    for _ in range(2):
        assert b.allow()
        b.failure()
    b.success()  # consecutive failures only
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert b.retry_after() == 10
    clock.now += 10
    assert b.allow()  # the single half-open probe
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # no second probe while the first is out
    b.success()
    assert b.state is BreakerState.CLOSED
    assert b.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_reopens_and_a_released_probe_frees_the_slot() -> None:
    clock = Clock()
    b = Breaker("p", threshold=1, open_seconds=5, clock=clock)
    b.allow()
    b.failure()
    clock.now += 5
    assert b.allow()
    b.release()  # the client went away: nothing learned
    assert b.allow()
    b.failure()
    assert b.state is BreakerState.OPEN
    assert b.retry_after() == 5


def test_breakers_survive_reloads_unless_the_base_url_changes() -> None:
    breakers = Breakers()
    r = Resilience()
    first = breakers.get("p", "https://a", r)
    assert breakers.get("p", "https://a", Resilience(breaker_failure_threshold=9)) is first
    assert first.threshold == 9
    assert breakers.get("p", "https://b", r) is not first
    assert breakers.retain(["q"]) == ["p"]


def test_retry_budget_ratio_floor_and_window() -> None:
    clock = Clock()
    budget = RetryBudget(20, clock=clock)
    for _ in range(100):
        budget.first_attempt()
    granted = sum(budget.try_retry() for _ in range(50))
    assert granted == 20
    clock.now += 11  # the window slid past all of it
    granted = sum(budget.try_retry() for _ in range(50))
    assert granted == MIN_RETRIES_PER_WINDOW
    assert not RetryBudget(0, clock=clock).try_retry()


def plan(resilience: Resilience, breakers: dict[str, Breaker], *providers: str) -> AttemptPlan:
    table = RouteTable([route("r", ["*"], *providers)])
    found = table.match("m")
    assert found is not None
    return AttemptPlan(found, resilience, breakers.__getitem__, RetryBudget(100))


def test_plan_walks_targets_and_wraps_up_to_max_attempts() -> None:
    clock = Clock()
    bs = {p: Breaker(p, threshold=5, open_seconds=1, clock=clock) for p in "ab"}
    p = plan(Resilience(max_attempts=3), bs, "a", "b")
    order = []
    while (t := p.next()) is not None:
        order.append(t.provider)
        assert p.may_fail_over(Failure.SERVER_ERROR)
    assert order == ["a", "b", "a"]


def test_plan_skips_open_breakers_and_reports_when_they_reopen() -> None:
    clock = Clock()
    bs = {p: Breaker(p, threshold=1, open_seconds=4, clock=clock) for p in "ab"}
    bs["a"].allow()
    bs["a"].failure()
    p = plan(Resilience(), bs, "a", "b")
    t = p.next()
    assert t is not None
    assert t.provider == "b"
    assert [(r.provider, r.outcome) for r in p.path] == [("a", "breaker_open")]
    bs["b"].allow()
    bs["b"].failure()
    only_open = plan(Resilience(), bs, "a", "b")
    assert only_open.next() is None
    assert only_open.retry_after() == 4


def test_failover_only_for_listed_failures() -> None:
    bs = {"a": Breaker("a", threshold=5, open_seconds=1)}
    p = plan(Resilience(failover_on=["connect"]), bs, "a")
    assert p.may_fail_over(Failure.CONNECT)
    assert p.may_fail_over(Failure.NO_KEY)  # local problems always move on
    assert not p.may_fail_over(Failure.SERVER_ERROR)
    assert p.stopped == "failover_off"
    assert p.next() is None
    assert not p.counts_against_breaker(Failure.RATE_LIMITED)
    assert p.counts_against_breaker(Failure.TIMEOUT)
