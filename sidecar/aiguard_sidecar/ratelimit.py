"""Rate limits: requests, input and output tokens per minute, and concurrent requests.

What is counted
    Each ``spec.rateLimits.limits[]`` entry applies to requests whose model matches one of its
    ``models`` globs, and counts per its ``scope``:

    ``user``      the end user; a request without one counts against its workload instead
    ``group``     each group of the principal (a principal without groups is not counted)
    ``workload``  the pod's ``namespace/serviceaccount``
    ``model``     the requested model name

    A request must fit every matching limit for every key it maps to; it is then charged to all
    of them at once (all or nothing).

Algorithm: sliding window of 12 five-second buckets
    Per key and budget, usage is counted in :data:`BUCKETS` buckets of
    :data:`BUCKET_SECONDS` each (one minute in all), in a ring; a bucket is dropped as soon as
    it is a minute old. "Usage in the last minute" is the sum of the live buckets (running
    totals are kept, so a check is O(1); the ring is 12 numbers per budget). A request made
    at ``t`` stops counting between ``t + 55 s`` and ``t + 60 s``, so the budget slides in
    5-second steps and never resets all at once at a minute boundary; in any 60-second span
    at most one bucket's worth more than the budget can be admitted. Alternatives rejected: a
    two-window weighted counter is smaller but, with low limits, can block a caller for two
    minutes after one request; GCRA/token buckets refill continuously and admit up to twice
    the budget within a minute. The same arithmetic runs in memory and in the Redis script.

    * ``requestsPerMinute``: each request costs 1 at ``acquire``.
    * ``inputTokensPerMinute``: ``acquire`` charges the caller's estimate; ``Lease.release``
      corrects the charge by (actual - estimate) in the bucket that was charged, as long as
      that bucket still counts.
    * ``outputTokensPerMinute``: output is unknown in advance, so it is charged at release and
      checked at the next ``acquire`` (which needs at least one token of headroom). One large
      response can overdraw the budget; later requests wait until it has slid out.
    * A single request larger than a whole budget (an estimate above ``inputTokensPerMinute``)
      is admitted only when the budget is completely unused, and then charged in full: it is
      neither stuck forever nor free.
    * ``concurrency``: an in-flight count, taken at ``acquire`` and given back by
      ``Lease.release``.

Retry-After
    :class:`Denied` carries the limit that denied (the one needing the longest wait when
    several do) and the exact time until the request would fit if nothing else arrived: the
    start of the first bucket at which enough old buckets have dropped out. Concurrency has
    no such time (it depends on when other requests end): it answers
    :data:`CONCURRENCY_RETRY_AFTER_SECONDS`.

Redis (limits shared across replicas)
    One Lua script per ``acquire`` (one round trip, atomic across every key of the request),
    one per ``release``. Keys are ``{keyPrefix}w|{limit}|{scope}:{value}`` (a hash with the
    bucket ring, TTL two minutes) and ``{keyPrefix}c|{limit}|{scope}:{value}`` (a sorted
    set of in-flight lease ids scored by expiry). Values longer than 128 characters are
    replaced by their SHA-256. Time is the sidecars' wall clock, passed into the script, so
    replicas need NTP-synchronised clocks (milliseconds of skew are harmless with
    five-second buckets). A concurrency slot carries an expiry that its sidecar refreshes every
    :data:`REDIS_LEASE_REFRESH_SECONDS` while the request runs, so the slots of a crashed
    sidecar free themselves within :data:`REDIS_LEASE_TTL_SECONDS`. All keys of one request
    are touched by one script: on Redis Cluster put a hash tag in ``keyPrefix``
    (e.g. ``{aiguard}:rl:``).

    **When Redis is unreachable, rate limiting fails open** (:data:`REDIS_FAIL_OPEN`): the
    request is admitted uncounted, a warning is logged (at most every
    :data:`REDIS_WARN_INTERVAL_SECONDS`) and :attr:`RedisRateLimiter.fail_open_total` counts
    it. Availability of the application beats the precision of a budget, and every admitted
    request still passes identity, access rules and guardrails. After a failure, Redis is not
    asked again for :data:`REDIS_COOLDOWN_SECONDS`, so an outage adds no latency per request.
"""

from __future__ import annotations

import abc
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from aiguard_api.policy_types import Scope, model_matches
from aiguard_api.view import RateLimit, RateLimits
from aiguard_sidecar.identity import Principal

log = logging.getLogger("aiguard.sidecar.ratelimit")

#: Length of a rate-limit window: every budget is per minute...
WINDOW_SECONDS: Final = 60.0
#: ...counted in this many buckets of BUCKET_SECONDS (the window slides in these steps).
BUCKETS: Final = 12
BUCKET_SECONDS: Final = WINDOW_SECONDS / BUCKETS
#: Retry-After for a concurrency denial (no exact answer exists: it depends on other requests).
CONCURRENCY_RETRY_AFTER_SECONDS: Final = 1.0
#: Redis unreachable → admit the request uncounted (True) rather than reject it.
REDIS_FAIL_OPEN: Final = True
#: After a Redis error, skip Redis (and fail open) for this long.
REDIS_COOLDOWN_SECONDS: Final = 1.0
#: At most one "Redis unreachable" warning per this many seconds.
REDIS_WARN_INTERVAL_SECONDS: Final = 10.0
#: Socket timeouts towards Redis: a slow Redis must not stall requests.
REDIS_SOCKET_TIMEOUT_SECONDS: Final = 0.25
#: A concurrency slot expires this long after its sidecar last refreshed it.
REDIS_LEASE_TTL_SECONDS: Final = 60.0
REDIS_LEASE_REFRESH_SECONDS: Final = 20.0
#: Scope values longer than this are hashed in Redis keys.
MAX_KEY_VALUE_CHARS: Final = 128
#: Bucket hashes in Redis outlive their last write by two minutes.
_HASH_TTL_MS: Final = int(2 * WINDOW_SECONDS * 1000)
#: Models whose matching limits are memoised (per limiter; cleared when full).
_MODEL_CACHE_SIZE: Final = 1024


# --------------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True, slots=True)
class Denied:
    """A request over a limit. ``retry_after`` is in seconds, for the Retry-After header."""

    limit: str
    retry_after: float
    reason: str = ""  # human-readable: which budget, per what (the caller's own key only)


class Lease:
    """Admission of one request. Call :meth:`release` once it ends (idempotent)."""

    __slots__ = ("__weakref__", "_released", "limits")

    def __init__(self, limits: tuple[str, ...] = ()) -> None:
        self.limits = limits  # names of the limits the request was counted against
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    async def release(self, *, input_tokens: int, output_tokens: int) -> None:
        """Report actual usage and give back the concurrency slot. Never raises."""
        if self._released:
            return
        self._released = True
        await self._release(max(0, input_tokens), max(0, output_tokens))

    async def _release(self, input_tokens: int, output_tokens: int) -> None:
        return None


class RateLimiter(abc.ABC):
    """Admits or denies requests against ``spec.rateLimits``. Use :func:`build_limiter`."""

    def __init__(self, cfg: RateLimits, *, clock: Callable[[], float]) -> None:
        self._limits = tuple(_Limit(i, lim) for i, lim in enumerate(cfg.limits))
        self._clock = clock
        self._by_model: dict[str, tuple[_Limit, ...]] = {}

    @abc.abstractmethod
    async def acquire(
        self, principal: Principal, *, model: str, est_input_tokens: int
    ) -> Lease | Denied:
        """A :class:`Lease` to release when the request ends, or why it must wait."""

    async def close(self) -> None:
        return None

    def _limits_for(self, model: str) -> tuple[_Limit, ...]:
        found = self._by_model.get(model)
        if found is None:
            found = tuple(lim for lim in self._limits if lim.matches(model))
            if len(model) <= 256:
                if len(self._by_model) >= _MODEL_CACHE_SIZE:
                    self._by_model.clear()
                self._by_model[model] = found
        return found


def build_limiter(
    cfg: RateLimits, *, redis_url: str | None, clock: Callable[[], float] | None = None
) -> RateLimiter:
    """In-memory limiter, or a Redis one when ``cfg.redis`` is set.

    ``redis_url`` is the resolved URL (from ``redis.url`` or the file of ``urlSecretRef``);
    it is required when ``cfg.redis`` is set (ValueError otherwise) and ignored when not.
    """
    if cfg.redis is None:
        return MemoryRateLimiter(cfg, clock=clock or time.monotonic)
    if not redis_url:
        raise ValueError("rateLimits.redis is set but no Redis URL was resolved")
    # Imported here: the redis client costs ~8 MB of RSS that sidecars without a shared
    # store should not pay (idle RSS budget: 60 MB).
    from aiguard_sidecar.ratelimit_redis import RedisRateLimiter

    return RedisRateLimiter(cfg, url=redis_url, clock=clock or time.time)


# --------------------------------------------------------------------------------------------
# Shared pieces


def bucket_wait(
    ring: Sequence[int], total: int, n: int, cost: int, limit: int, now: float
) -> float:
    """Seconds until ``cost`` fits a budget; 0 when it fits now.

    ``ring[i]``: usage of the live bucket with index ``≡ i (mod BUCKETS)``; ``total``: their
    sum; ``n``: the current bucket index (``floor(now / BUCKET_SECONDS)``). Buckets drop out
    oldest first, the one with index ``n + k - BUCKETS`` at the start of bucket ``n + k``.
    The same loop is in the Redis script (``_ACQUIRE_LUA``).
    """
    cost = min(cost, limit)
    if total + cost <= limit:
        return 0.0
    freed = 0
    for k in range(1, BUCKETS + 1):
        freed += ring[(n + k) % BUCKETS]
        if total - freed + cost <= limit:
            return max((n + k) * BUCKET_SECONDS - now, 0.001)
    raise AssertionError("unreachable: an empty ring fits any cost <= limit")


_SCOPE_NOUN: Final[dict[Scope, str]] = {
    Scope.USER: "user",
    Scope.GROUP: "group",
    Scope.WORKLOAD: "workload",
    Scope.MODEL: "model",
}


def _safe(value: str) -> str:
    v = "".join(c if c.isprintable() else "?" for c in value[:65])
    return v if len(v) <= 64 else v[:63] + "…"


class _Limit:
    __slots__ = (
        "concurrency",
        "exact",
        "globs",
        "index",
        "input_tpm",
        "name",
        "output_tpm",
        "rpm",
        "scope",
    )

    def __init__(self, index: int, lim: RateLimit) -> None:
        self.index = index
        self.name = lim.name
        self.scope = lim.scope
        self.exact = frozenset(p for p in lim.models if not set("*?[").intersection(p))
        self.globs = tuple(p for p in lim.models if set("*?[").intersection(p))
        self.rpm = lim.requests_per_minute or 0
        self.input_tpm = lim.input_tokens_per_minute or 0
        self.output_tpm = lim.output_tokens_per_minute or 0
        self.concurrency = lim.concurrency or 0

    def matches(self, model: str) -> bool:
        return model in self.exact or any(model_matches(p, model) for p in self.globs)

    def keys(self, p: Principal, model: str) -> Sequence[str]:
        """The counter keys this request maps to (``kind:value``; value last)."""
        s = self.scope
        if s is Scope.USER:
            if p.user is not None:
                return (f"user:{p.user}",)
            return (f"workload:{p.workload.namespace}/{p.workload.service_account}",)
        if s is Scope.WORKLOAD:
            return (f"workload:{p.workload.namespace}/{p.workload.service_account}",)
        if s is Scope.GROUP:
            return tuple(f"group:{g}" for g in dict.fromkeys(p.groups))
        return (f"model:{model}",)

    def describe(self, budget: str, key: str) -> str:
        kind, _, value = key.partition(":")
        what = {
            "requests": f"{self.rpm} requests per minute",
            "input": f"{self.input_tpm} input tokens per minute",
            "output": f"{self.output_tpm} output tokens per minute",
            "concurrency": f"{self.concurrency} concurrent requests",
        }[budget]
        per = _SCOPE_NOUN[self.scope]
        return f"rate limit {self.name} ({what} per {per}) exceeded for {kind} {_safe(value)}"


# --------------------------------------------------------------------------------------------
# In-memory


class _Budget:
    """One budget's ring of bucket counts and their running total."""

    __slots__ = ("ring", "total")

    def __init__(self) -> None:
        self.ring = [0] * BUCKETS
        self.total = 0

    def drop(self, slot: int) -> None:
        self.total -= self.ring[slot]
        self.ring[slot] = 0

    def add(self, slot: int, amount: int) -> None:
        amount = max(amount, -self.ring[slot])  # corrections never go below zero
        self.ring[slot] += amount
        self.total += amount

    def wait(self, n: int, cost: int, limit: int, now: float) -> float:
        if self.total + min(cost, limit) <= limit:  # the common case, without a call
            return 0.0
        return bucket_wait(self.ring, self.total, n, cost, limit, now)


class _State:
    """Counters of one (limit, key): current bucket index, its budgets, in-flight count.

    Only the budgets the limit sets exist (None otherwise).
    """

    __slots__ = ("inflight", "inp", "n", "out", "req")

    def __init__(self, n: int, lim: _Limit) -> None:
        self.n = n
        self.req = _Budget() if lim.rpm else None
        self.inp = _Budget() if lim.input_tpm else None
        self.out = _Budget() if lim.output_tpm else None
        self.inflight = 0

    def advance(self, n: int) -> None:
        """Move to bucket ``n``, dropping buckets that are now a minute old."""
        d = n - self.n
        if d <= 0:
            return  # same bucket (or a clock that went backwards: keep the counts)
        for budget in (self.req, self.inp, self.out):
            if budget is not None:
                for k in range(1, min(d, BUCKETS) + 1):
                    budget.drop((self.n + k) % BUCKETS)
        self.n = n


def _release_inflight(states: tuple[_State, ...]) -> None:
    for st in states:
        if st.inflight > 0:
            st.inflight -= 1


class _MemoryLease(Lease):
    __slots__ = ("_est", "_finalizer", "_limiter", "_n", "_states")

    def __init__(
        self,
        limiter: MemoryRateLimiter,
        states: tuple[_State, ...],
        n: int,
        est: int,
        limits: tuple[str, ...],
    ) -> None:
        super().__init__(limits)
        self._limiter = limiter
        self._states = states
        self._n = n
        self._est = est
        # A lease dropped without release must not hold its concurrency slot forever.
        self._finalizer = weakref.finalize(self, _release_inflight, states)

    async def _release(self, input_tokens: int, output_tokens: int) -> None:
        self._finalizer.detach()
        n = self._limiter.bucket_index()
        delta = input_tokens - self._est
        # The estimate was charged to bucket _n: correct it there while it still counts.
        charged = self._n % BUCKETS if delta and n - self._n < BUCKETS else None
        slot = n % BUCKETS
        for st in self._states:
            st.advance(n)
            if charged is not None and st.inp is not None:
                st.inp.add(charged, delta)
            if output_tokens and st.out is not None:
                st.out.add(slot, output_tokens)
            if st.inflight > 0:
                st.inflight -= 1


class MemoryRateLimiter(RateLimiter):
    """Counters in this process: one sidecar, asyncio, O(1) per key checked."""

    def __init__(self, cfg: RateLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(cfg, clock=clock)
        self._states: dict[tuple[int, str], _State] = {}
        self._next_sweep = clock() + WINDOW_SECONDS

    def bucket_index(self) -> int:
        return int(self._clock() // BUCKET_SECONDS)

    def _sweep(self, n: int) -> None:
        """Forget keys whose every bucket has dropped out and that have nothing in flight."""
        stale = [k for k, st in self._states.items() if st.n <= n - BUCKETS and not st.inflight]
        for k in stale:
            del self._states[k]

    async def acquire(
        self, principal: Principal, *, model: str, est_input_tokens: int
    ) -> Lease | Denied:
        limits = self._limits_for(model)
        if not limits:
            return Lease()
        now = self._clock()
        n = int(now // BUCKET_SECONDS)
        if now >= self._next_sweep:
            self._next_sweep = now + WINDOW_SECONDS
            self._sweep(n)
        est = max(0, est_input_tokens)
        states: list[_State] = []
        worst: tuple[float, _Limit, str, str] | None = None
        for lim in limits:
            for key in lim.keys(principal, model):
                st = self._states.get((lim.index, key))
                if st is None:
                    st = self._states[(lim.index, key)] = _State(n, lim)
                else:
                    st.advance(n)
                states.append(st)
                # Every budget is checked so that the longest wait is the one reported.
                w = st.req.wait(n, 1, lim.rpm, now) if st.req is not None else 0.0
                if w and (worst is None or w > worst[0]):
                    worst = (w, lim, "requests", key)
                w = st.inp.wait(n, max(est, 1), lim.input_tpm, now) if st.inp is not None else 0.0
                if w and (worst is None or w > worst[0]):
                    worst = (w, lim, "input", key)
                # Output is charged at release; admitting needs one token of headroom.
                w = st.out.wait(n, 1, lim.output_tpm, now) if st.out is not None else 0.0
                if w and (worst is None or w > worst[0]):
                    worst = (w, lim, "output", key)
                if lim.concurrency and st.inflight >= lim.concurrency:
                    w = CONCURRENCY_RETRY_AFTER_SECONDS
                    if worst is None or w > worst[0]:
                        worst = (w, lim, "concurrency", key)
        if worst is not None:
            w, lim, budget, key = worst
            return Denied(lim.name, w, lim.describe(budget, key))
        slot = n % BUCKETS
        for st in states:
            if st.req is not None:
                st.req.ring[slot] += 1
                st.req.total += 1
            if st.inp is not None and est:
                st.inp.ring[slot] += est
                st.inp.total += est
            st.inflight += 1
        return _MemoryLease(self, tuple(states), n, est, tuple(lim.name for lim in limits))


def __getattr__(name: str) -> object:
    """``ratelimit.RedisRateLimiter`` still works, importing the Redis module on first use."""
    if name == "RedisRateLimiter":
        from aiguard_sidecar import ratelimit_redis

        return ratelimit_redis.RedisRateLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
