"""Rate limits shared across sidecar replicas, in Redis (``spec.rateLimits.redis``).

The arithmetic is the in-memory limiter's (:mod:`aiguard_sidecar.ratelimit`), run as Lua
scripts so one ``acquire`` is one round trip and atomic. Kept in its own module so sidecars
without a shared store never import the redis client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import weakref
from collections.abc import Callable
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from aiguard_api.view import RateLimits
from aiguard_sidecar.identity import Principal
from aiguard_sidecar.ratelimit import (
    _HASH_TTL_MS,
    BUCKET_SECONDS,
    BUCKETS,
    CONCURRENCY_RETRY_AFTER_SECONDS,
    MAX_KEY_VALUE_CHARS,
    REDIS_COOLDOWN_SECONDS,
    REDIS_FAIL_OPEN,
    REDIS_LEASE_REFRESH_SECONDS,
    REDIS_LEASE_TTL_SECONDS,
    REDIS_SOCKET_TIMEOUT_SECONDS,
    REDIS_WARN_INTERVAL_SECONDS,
    Denied,
    Lease,
    RateLimiter,
    _Limit,
)

log = logging.getLogger("aiguard.sidecar.ratelimit")

# Redis

# Shared by both scripts: load a bucket ring hash, dropping buckets a minute old.
# Hash fields: n (bucket index of the last write), r0..r11, i0..i11, o0..o11.
_LUA_COMMON: Final = """
local B = tonumber(ARGV[1])
local b = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local n = math.floor(now / b)

local function load(key)
  local flat = redis.call('HGETALL', key)
  local h = {}
  for j = 1, #flat, 2 do h[flat[j]] = tonumber(flat[j + 1]) end
  local last = h['n'] or n
  local s = {n = math.max(n, last), r = {}, i = {}, o = {}, rt = 0, it = 0, ot = 0}
  for slot = 0, B - 1 do
    -- the bucket held in this slot, and whether it is still less than a minute old
    local idx = last - ((last - slot) % B)
    local live = idx > n - B
    local r, i, o = 0, 0, 0
    if live then
      r, i, o = h['r' .. slot] or 0, h['i' .. slot] or 0, h['o' .. slot] or 0
    end
    s.r[slot], s.i[slot], s.o[slot] = r, i, o
    s.rt, s.it, s.ot = s.rt + r, s.it + i, s.ot + o
  end
  return s
end

local function save(key, s, ttl)
  local args = {'n', s.n}
  for slot = 0, B - 1 do
    table.insert(args, 'r' .. slot); table.insert(args, s.r[slot])
    table.insert(args, 'i' .. slot); table.insert(args, s.i[slot])
    table.insert(args, 'o' .. slot); table.insert(args, s.o[slot])
  end
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, ttl)
end
"""

# KEYS: per entry e, KEYS[2e-1] = bucket hash, KEYS[2e] = concurrency zset.
# ARGV: buckets, bucket seconds, now, est, lease id, lease expiry, hash ttl ms, lease ttl ms,
#       concurrency retry-after, then per entry: rpm, itpm, otpm, concurrency (0 = unset).
# Returns {1} when admitted (and charged everywhere), else {0, entry, wait, budget}.
_ACQUIRE_LUA: Final = (
    _LUA_COMMON
    + """
local est = tonumber(ARGV[4])
local lease = ARGV[5]
local lease_exp = tonumber(ARGV[6])
local hash_ttl = tonumber(ARGV[7])
local lease_ttl = tonumber(ARGV[8])
local conc_retry = tonumber(ARGV[9])
local nentries = #KEYS / 2

local function wait(ring, total, cost, limit)
  if cost > limit then cost = limit end
  if total + cost <= limit then return 0 end
  local freed = 0
  for k = 1, B do
    freed = freed + ring[(n + k) % B]
    if total - freed + cost <= limit then
      local x = (n + k) * b - now
      if x < 0.001 then x = 0.001 end
      return x
    end
  end
  return B * b
end

local states = {}
local worst, worst_e, worst_b = 0, 0, ''
for e = 1, nentries do
  local s = load(KEYS[2 * e - 1])
  states[e] = s
  local base = 9 + (e - 1) * 4
  local rpm, itpm = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local otpm, conc = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local t, bud = 0, ''
  if rpm > 0 then
    local x = wait(s.r, s.rt, 1, rpm)
    if x > t then t, bud = x, 'requests' end
  end
  if itpm > 0 then
    local x = wait(s.i, s.it, math.max(est, 1), itpm)
    if x > t then t, bud = x, 'input' end
  end
  if otpm > 0 then
    local x = wait(s.o, s.ot, 1, otpm)
    if x > t then t, bud = x, 'output' end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2 * e], '-inf', now)
    if redis.call('ZCARD', KEYS[2 * e]) >= conc and conc_retry > t then
      t, bud = conc_retry, 'concurrency'
    end
  end
  if t > worst then worst, worst_e, worst_b = t, e, bud end
end
if worst > 0 then return {0, worst_e, tostring(worst), worst_b} end
local slot = n % B
for e = 1, nentries do
  local s = states[e]
  s.r[slot] = s.r[slot] + 1
  s.i[slot] = s.i[slot] + est
  save(KEYS[2 * e - 1], s, hash_ttl)
  if tonumber(ARGV[9 + (e - 1) * 4 + 4]) > 0 then
    redis.call('ZADD', KEYS[2 * e], lease_exp, lease)
    redis.call('PEXPIRE', KEYS[2 * e], lease_ttl)
  end
end
return {1}
"""
)

# KEYS as for acquire. ARGV: buckets, bucket seconds, now, charged bucket, input delta,
#   output tokens, lease id, hash ttl ms.
_RELEASE_LUA: Final = (
    _LUA_COMMON
    + """
local charged = tonumber(ARGV[4])
local delta = tonumber(ARGV[5])
local out = tonumber(ARGV[6])
local lease = ARGV[7]
local hash_ttl = tonumber(ARGV[8])
local slot = n % B
for e = 1, #KEYS / 2 do
  local s = load(KEYS[2 * e - 1])
  if delta ~= 0 and charged > n - B and charged <= s.n then
    local c = charged % B
    s.i[c] = math.max(0, s.i[c] + delta)
  end
  s.o[slot] = s.o[slot] + out
  save(KEYS[2 * e - 1], s, hash_ttl)
  redis.call('ZREM', KEYS[2 * e], lease)
end
return 1
"""
)


def _key_value(key: str) -> str:
    kind, _, value = key.partition(":")
    if len(value) > MAX_KEY_VALUE_CHARS:
        value = "sha256=" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{kind}:{value}"


class _RedisLease(Lease):
    __slots__ = ("_est", "_finalizer", "_id", "_keys", "_limiter", "_n")

    def __init__(
        self,
        limiter: RedisRateLimiter,
        lease_id: str,
        keys: list[str],
        n: int,
        est: int,
        limits: tuple[str, ...],
    ) -> None:
        super().__init__(limits)
        self._limiter = limiter
        self._id = lease_id
        self._keys = keys
        self._n = n
        self._est = est
        self._finalizer = weakref.finalize(self, limiter.forget_lease, lease_id)

    async def _release(self, input_tokens: int, output_tokens: int) -> None:
        self._finalizer.detach()
        await self._limiter.release_lease(
            self._id, self._keys, self._n, input_tokens - self._est, output_tokens
        )


class RedisRateLimiter(RateLimiter):
    """Counters in Redis, shared by every sidecar using the same Redis and key prefix."""

    def __init__(
        self,
        cfg: RateLimits,
        *,
        url: str | None = None,
        client: aioredis.Redis | None = None,
        clock: Callable[[], float] = time.time,
        socket_timeout: float = REDIS_SOCKET_TIMEOUT_SECONDS,
        lease_ttl: float = REDIS_LEASE_TTL_SECONDS,
        lease_refresh: float = REDIS_LEASE_REFRESH_SECONDS,
        fail_open: bool = REDIS_FAIL_OPEN,
    ) -> None:
        super().__init__(cfg, clock=clock)
        if client is None:
            if url is None:
                raise ValueError("RedisRateLimiter needs a url or a client")
            client = aioredis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                # One immediate retry: it replaces a pooled connection Redis has dropped,
                # without multiplying the latency of a real outage.
                retry=Retry(NoBackoff(), 1),
            )
        self._redis = client
        self._prefix = cfg.redis.key_prefix if cfg.redis is not None else "aiguard:rl:"
        self._acquire_script = client.register_script(_ACQUIRE_LUA)
        self._release_script = client.register_script(_RELEASE_LUA)
        self._lease_ttl = lease_ttl
        self._lease_refresh = lease_refresh
        self._fail_open_enabled = fail_open
        self._instance = os.urandom(6).hex()
        self._seq = 0
        self._live: dict[str, list[str]] = {}  # lease id → its concurrency zset keys
        self._refresher: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._last_warning = -REDIS_WARN_INTERVAL_SECONDS
        #: Requests admitted uncounted because Redis failed (export as a metric).
        self.fail_open_total = 0
        #: Releases that could not be written to Redis.
        self.release_errors_total = 0

    # -- failure handling ---------------------------------------------------------------

    def _redis_failed(self, what: str, err: BaseException) -> None:
        now = time.monotonic()
        self._down_until = now + REDIS_COOLDOWN_SECONDS
        if now - self._last_warning >= REDIS_WARN_INTERVAL_SECONDS:
            self._last_warning = now
            log.warning(
                "rate limiting: Redis %s failed (%s: %s); failing open for %.0fs at a time",
                what,
                type(err).__name__,
                err,
                REDIS_COOLDOWN_SECONDS,
            )

    def _fail_open(self) -> Lease | Denied:
        if not self._fail_open_enabled:
            return Denied(
                "redis-unavailable",
                REDIS_COOLDOWN_SECONDS,
                "rate limits cannot be checked: the shared rate-limit store is unreachable",
            )
        self.fail_open_total += 1
        return Lease()

    # -- acquire / release -------------------------------------------------------------

    async def acquire(
        self, principal: Principal, *, model: str, est_input_tokens: int
    ) -> Lease | Denied:
        limits = self._limits_for(model)
        if not limits:
            return Lease()
        if time.monotonic() < self._down_until:
            return self._fail_open()
        est = max(0, est_input_tokens)
        keys: list[str] = []
        args: list[int] = []
        entries: list[tuple[_Limit, str]] = []
        conc_keys: list[str] = []
        p = self._prefix
        for lim in limits:
            for key in lim.keys(principal, model):
                kv = _key_value(key)
                wk, ck = f"{p}w|{lim.name}|{kv}", f"{p}c|{lim.name}|{kv}"
                keys += (wk, ck)
                args += (lim.rpm, lim.input_tpm, lim.output_tpm, lim.concurrency)
                entries.append((lim, key))
                if lim.concurrency:
                    conc_keys.append(ck)
        if not entries:
            return Lease()
        now = self._clock()
        self._seq += 1
        lease_id = f"{self._instance}:{self._seq}"
        argv: list[str | int] = [
            BUCKETS,
            repr(BUCKET_SECONDS),
            repr(now),
            est,
            lease_id,
            repr(now + self._lease_ttl),
            _HASH_TTL_MS,
            int(self._lease_ttl * 1000),
            repr(CONCURRENCY_RETRY_AFTER_SECONDS),
            *args,
        ]
        try:
            res = await self._acquire_script(keys=keys, args=argv)
        except (RedisError, OSError, TimeoutError) as e:
            self._redis_failed("acquire", e)
            return self._fail_open()
        if int(res[0]) == 0:
            lim, key = entries[int(res[1]) - 1]
            budget = res[3].decode() if isinstance(res[3], bytes) else str(res[3])
            return Denied(lim.name, float(res[2]), lim.describe(budget, key))
        if conc_keys:
            self._live[lease_id] = conc_keys
            self._ensure_refresher()
        n = int(now // BUCKET_SECONDS)
        return _RedisLease(self, lease_id, keys, n, est, tuple(lim.name for lim in limits))

    async def release_lease(
        self, lease_id: str, keys: list[str], n: int, delta: int, output_tokens: int
    ) -> None:
        self._live.pop(lease_id, None)
        argv: list[str | int] = [
            BUCKETS,
            repr(BUCKET_SECONDS),
            repr(self._clock()),
            n,
            delta,
            output_tokens,
            lease_id,
            _HASH_TTL_MS,
        ]
        try:
            await self._release_script(keys=keys, args=argv)
        except (RedisError, OSError, TimeoutError) as e:
            # The slot expires on its own (no longer refreshed); usage is lost: fail open.
            self.release_errors_total += 1
            self._redis_failed("release", e)

    def forget_lease(self, lease_id: str) -> None:
        """A lease dropped without release: stop refreshing its slot so it expires."""
        self._live.pop(lease_id, None)

    # -- concurrency slot refresh ------------------------------------------------------

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_loop(), name="aiguard-ratelimit-leases"
            )

    async def _refresh_loop(self) -> None:
        while self._live:
            await asyncio.sleep(self._lease_refresh)
            await self.refresh_leases()

    async def refresh_leases(self) -> None:
        """Push the expiry of every live concurrency slot of this sidecar forward."""
        if not self._live:
            return
        exp = self._clock() + self._lease_ttl
        ttl_ms = int(self._lease_ttl * 1000)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for lease_id, ckeys in list(self._live.items()):
                    for ck in ckeys:
                        pipe.zadd(ck, {lease_id: exp}, xx=True)
                        pipe.pexpire(ck, ttl_ms)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as e:
            self._redis_failed("lease refresh", e)

    async def close(self) -> None:
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose()
