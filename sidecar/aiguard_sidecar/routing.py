"""Which provider serves a request, and what happens when it fails.

* :class:`RouteTable` — ``spec.routes`` compiled once per policy: the first route with a model
  pattern matching the requested model wins; lookups are memoised (bounded).
* :class:`Breaker` — one per provider, shared by every route and kept across policy reloads::

      closed ──N consecutive failures──► open ──openSeconds──► half-open (one probe)
        ▲                                  ▲                      │
        └────────── probe succeeds ────────┼──── probe fails ─────┘

* :class:`RetryBudget` — retries (attempts after the first) may add at most
  ``retryBudgetPercent`` of first attempts over a sliding 10 s window, with a floor of
  :data:`MIN_RETRIES_PER_WINDOW` so a quiet sidecar can still fail over (0 % disables retries).
* :class:`AttemptPlan` — one request's walk over its route's targets: skips providers whose
  breaker is open, stops at ``maxAttempts``, when the budget is spent, or on a failure kind not
  listed in ``failoverOn``. Once a streamed response has sent a byte to the client the caller
  stops asking it for targets.
* :class:`StoredResponses` — which provider holds a stored Responses API response, for
  ``GET``/``DELETE /responses/{id}``, which name no model (see ``pipeline.py``).

Everything here is pure state plus an injectable clock: no I/O.
"""

from __future__ import annotations

import enum
import fnmatch
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiguard_api.view import Resilience, Route

Clock = Callable[[], float]

MIN_RETRIES_PER_WINDOW: Final = 3
BUDGET_WINDOW_SECONDS: Final = 10
ROUTE_CACHE_SIZE: Final = 4096
_GLOB: Final = frozenset("*?[")


class Failure(enum.StrEnum):
    """Why an attempt failed; the first four are ``spec.resilience.failoverOn`` values."""

    CONNECT = "connect"  # TCP/TLS connect failed, or the connection broke before a response
    TIMEOUT = "timeout"
    SERVER_ERROR = "5xx"
    RATE_LIMITED = "429"
    # Not failover triggers, recorded in the failover path:
    BREAKER_OPEN = "breaker_open"
    NO_KEY = "no_key"  # the provider key file is missing or empty
    UNSUPPORTED = "unsupported"  # the provider type cannot serve this API


HEALTH_FAILURES: Final = frozenset({Failure.CONNECT, Failure.TIMEOUT, Failure.SERVER_ERROR})
"""Failures that count against a provider's breaker (429 counts only when it fails over)."""


# ── breakers ─────────────────────────────────────────────────────────────────────────────────


class BreakerState(enum.IntEnum):
    """Values of the ``aiguard_breaker_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Breaker:
    __slots__ = (
        "_clock",
        "_failures",
        "_on_change",
        "_opened_at",
        "_probing",
        "name",
        "open_seconds",
        "state",
        "threshold",
    )

    def __init__(
        self,
        name: str,
        *,
        threshold: int,
        open_seconds: float,
        clock: Clock = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.state = BreakerState.CLOSED
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._on_change = on_change

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(self.name, state)

    def allow(self) -> bool:
        """May a request go to this provider now? In half-open, grants the single probe."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.open_seconds:
                return False
            self._set(BreakerState.HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.open_seconds - (self._clock() - self._opened_at))

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        self._probing = False
        if self.state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self.state is BreakerState.CLOSED and self._failures >= self.threshold:
            self._open()

    def release(self) -> None:
        """The attempt ended without telling anything about health (client went away)."""
        self._probing = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._set(BreakerState.OPEN)


class Breakers:
    """Breakers by provider name, surviving policy reloads (reset when the base URL changes)."""

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_change = on_change
        self._by_name: dict[str, tuple[str, Breaker]] = {}

    def get(self, name: str, base_url: str, resilience: Resilience) -> Breaker:
        known = self._by_name.get(name)
        if known is not None and known[0] == base_url:
            breaker = known[1]
        else:
            breaker = Breaker(
                name,
                threshold=resilience.breaker_failure_threshold,
                open_seconds=resilience.breaker_open_seconds,
                clock=self._clock,
                on_change=self._on_change,
            )
            self._by_name[name] = (base_url, breaker)
            if self._on_change is not None:
                self._on_change(name, breaker.state)
        breaker.threshold = resilience.breaker_failure_threshold
        breaker.open_seconds = resilience.breaker_open_seconds
        return breaker

    def retain(self, names: Sequence[str]) -> list[str]:
        """Forget breakers of providers no longer configured; returns the names dropped."""
        gone = [n for n in self._by_name if n not in names]
        for n in gone:
            del self._by_name[n]
        return gone


# ── retry budget ─────────────────────────────────────────────────────────────────────────────


class RetryBudget:
    """Sliding-window ratio of retries to first attempts (one-second buckets)."""

    __slots__ = ("_buckets", "_clock", "percent")

    def __init__(self, percent: int, *, clock: Clock = time.monotonic) -> None:
        self.percent = percent
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, first attempts, retries]

    def _bucket(self) -> list[int]:
        now = int(self._clock())
        buckets = self._buckets
        while buckets and buckets[0][0] <= now - BUDGET_WINDOW_SECONDS:
            buckets.popleft()
        if not buckets or buckets[-1][0] != now:
            buckets.append([now, 0, 0])
        return buckets[-1]

    def first_attempt(self) -> None:
        self._bucket()[1] += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget; False when the budget is spent."""
        if self.percent <= 0:
            return False
        current = self._bucket()
        firsts = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        allowed = max(MIN_RETRIES_PER_WINDOW, math.floor(firsts * self.percent / 100))
        if retries >= allowed:
            return False
        current[2] += 1
        return True


# ── routes ───────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Target:
    """A route target resolved against the providers: what an attempt needs to know."""

    provider: str
    model: str | None  # the model to ask for instead of the requested one


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str  # route name, or ``routes[i]``
    patterns: tuple[str, ...]
    targets: tuple[Target, ...]


class RouteTable:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(
            CompiledRoute(
                name=r.name or f"routes[{i}]",
                patterns=tuple(r.models),
                targets=tuple(Target(t.provider, t.model) for t in r.targets),
            )
            for i, r in enumerate(routes)
        )
        self._matchers: list[tuple[frozenset[str], re.Pattern[str] | None, CompiledRoute]] = []
        for route in self.routes:
            exact = frozenset(p for p in route.patterns if not _GLOB & set(p))
            globs = [fnmatch.translate(p) for p in route.patterns if _GLOB & set(p)]
            regex = re.compile("|".join(f"(?:{g})" for g in globs)) if globs else None
            self._matchers.append((exact, regex, route))
        self._cache: dict[str, CompiledRoute | None] = {}

    def match(self, model: str) -> CompiledRoute | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = None
        for exact, regex, route in self._matchers:
            if model in exact or (regex is not None and regex.match(model)):
                found = route
                break
        if len(self._cache) >= ROUTE_CACHE_SIZE:
            self._cache.clear()
        self._cache[model] = found
        return found

    def exact_models(self) -> list[str]:
        """Model names routes spell out (no globs), in policy order: the model list."""
        seen: dict[str, None] = {}
        for route in self.routes:
            for p in route.patterns:
                if not _GLOB & set(p):
                    seen.setdefault(p)
        return list(seen)


# ── one request's attempts ───────────────────────────────────────────────────────────────────


@dataclass(slots=True)
class AttemptRecord:
    """One step of the failover path (audit)."""

    provider: str
    model: str
    outcome: str  # "ok", a Failure value, or "http_<status>" for other answers
    status: int | None = None
    seconds: float = 0.0


@dataclass(slots=True)
class AttemptPlan:
    """Iterates a route's targets for one request. Call :meth:`next` until it returns None."""

    route: CompiledRoute
    resilience: Resilience
    breakers: Callable[[str], Breaker]
    budget: RetryBudget
    attempts: int = 0
    path: list[AttemptRecord] = field(default_factory=list)
    stopped: str | None = None
    """Why the plan ended early: ``budget``, ``failover_off`` or None."""
    _cursor: int = 0
    _skipped_open: list[Breaker] = field(default_factory=list)

    def next(self) -> Target | None:
        targets = self.route.targets
        limit = len(targets) * self.resilience.max_attempts
        while self.stopped is None and self.attempts < self.resilience.max_attempts:
            if self._cursor >= limit:
                return None
            target = targets[self._cursor % len(targets)]
            self._cursor += 1
            breaker = self.breakers(target.provider)
            if not breaker.allow():
                if breaker not in self._skipped_open:
                    self._skipped_open.append(breaker)
                    self.path.append(
                        AttemptRecord(
                            target.provider, target.model or "", Failure.BREAKER_OPEN.value
                        )
                    )
                continue
            if self.attempts == 0:
                self.budget.first_attempt()
            elif not self.budget.try_retry():
                breaker.release()
                self.stopped = "budget"
                return None
            self.attempts += 1
            return target
        return None

    def may_fail_over(self, failure: Failure) -> bool:
        """After ``failure``, may the request try another target?"""
        if failure in (Failure.NO_KEY, Failure.UNSUPPORTED):
            return True
        if failure.value in self.resilience.failover_on:
            return True
        self.stopped = "failover_off"
        return False

    def counts_against_breaker(self, failure: Failure) -> bool:
        return failure in HEALTH_FAILURES or (
            failure is Failure.RATE_LIMITED and "429" in self.resilience.failover_on
        )

    def retry_after(self) -> float | None:
        """When every target was skipped for an open breaker: seconds until the first probe."""
        if not self._skipped_open:
            return None
        return min(b.retry_after() for b in self._skipped_open)


# ── stored responses ─────────────────────────────────────────────────────────────────────────

STORED_RESPONSES: Final = 10_000


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What the sidecar learnt when a Responses API response was created through it."""

    provider: str  # the provider that answered (the only one that holds the response)
    model: str  # the model the client asked for: access rules and routes are checked on it
    user: str | None  # the verified end user who created it, if any


class StoredResponses:
    """Response id → :class:`StoredResponse`, most recent :data:`STORED_RESPONSES` kept.

    A response id names no model, so retrieving or deleting one cannot be routed or checked
    against the access rules by itself. The sidecar remembers, per process, the responses
    created through it; ids it does not know are refused (default deny), as is an id created
    by another end user. Process memory only: after a restart older ids are unknown.
    """

    def __init__(self, limit: int = STORED_RESPONSES) -> None:
        self._limit = limit
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def remember(self, response_id: str, entry: StoredResponse) -> None:
        self._entries[response_id] = entry
        self._entries.move_to_end(response_id)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        return self._entries.get(response_id)

    def forget(self, response_id: str) -> None:
        self._entries.pop(response_id, None)

    def __len__(self) -> int:
        return len(self._entries)
