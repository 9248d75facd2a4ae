"""End-user identity from verified JWTs: JWKS discovery, caching and signature checks.

The security choices are described in :mod:`aiguard_sidecar.identity`; this module holds the
PyJWT-based half so that sidecars whose policy configures no ``access.identity.jwt`` never
import PyJWT or cryptography.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from aiguard_api.view import JWTIdentity
from aiguard_sidecar.identity import (
    _ALG_CRV,
    _ALG_KTY,
    JWKS_FETCH_TIMEOUT_SECONDS,
    JWKS_MAX_BYTES,
    JWKS_MIN_REFETCH_SECONDS,
    JWKS_REFRESH_AHEAD_RATIO,
    JWKS_STALE_IF_ERROR_SECONDS,
    MAX_TOKEN_BYTES,
    VERIFIED_CACHE_SIZE,
    IdentityError,
    _clean_name,
    _discovery_url,
    _groups_from_claim,
    check_key_url,
    log,
)

# --------------------------------------------------------------------------------------------
# JWKS


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any  # a cryptography public key object

    def accepts(self, alg: str) -> bool:
        if _ALG_KTY.get(alg) != self.kty:
            return False
        if self.alg is not None and self.alg != alg:
            return False
        crvs = _ALG_CRV.get(alg)
        return crvs is None or self.crv in crvs


@dataclass(frozen=True, slots=True)
class _KeySet:
    by_kid: dict[str, tuple[_Key, ...]]
    all: tuple[_Key, ...]
    fetched_at: float
    generation: int


class _FetchError(Exception):
    """A discovery or JWKS fetch failed; the message is for logs (no token data in it)."""


def _parse_jwk(d: Any) -> _Key | None:
    """One JWK → a verification key, or None (with a log line) when it must not be used."""
    if not isinstance(d, dict):
        return None
    kty = d.get("kty")
    kid = d.get("kid")
    if kid is not None and not isinstance(kid, str):
        log.warning("jwks: ignoring a key whose kid is not a string")
        return None
    if kty not in ("RSA", "EC", "OKP"):
        return None  # oct (symmetric) and unknown types are never verification keys here
    if "d" in d or "p" in d:
        log.warning("jwks: ignoring key %r: it contains private key material", kid)
        return None
    use = d.get("use")
    if use is not None and use != "sig":
        return None
    ops = d.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    alg = d.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in _ALG_KTY):
        return None  # a key pinned to an algorithm we never accept (or to no string at all)
    crv = d.get("crv")
    try:
        key: Any
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk(d)
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(d)
        else:
            key = OKPAlgorithm.from_jwk(d)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as e:
        log.warning("jwks: ignoring key %r: %s", kid, e)
        return None
    return _Key(kid=kid, kty=kty, crv=crv if isinstance(crv, str) else None, alg=alg, key=key)


def parse_jwks(doc: Any, *, fetched_at: float, generation: int) -> _KeySet:
    """A JWKS document → key set; raises _FetchError when it holds no usable key."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise _FetchError("JWKS document has no 'keys' list")
    keys = tuple(k for k in (_parse_jwk(d) for d in doc["keys"]) if k is not None)
    if not keys:
        raise _FetchError("JWKS holds no usable signature verification key")
    by_kid: dict[str, list[_Key]] = {}
    for k in keys:
        if k.kid is not None:
            by_kid.setdefault(k.kid, []).append(k)
    return _KeySet(
        by_kid={kid: tuple(v) for kid, v in by_kid.items()},
        all=keys,
        fetched_at=fetched_at,
        generation=generation,
    )


@dataclass(slots=True)
class _Verified:
    user: str
    groups: tuple[str, ...]
    exp: float
    nbf: float | None
    iat: float | None
    generation: int


@dataclass(slots=True)
class _JWKSStats:
    fetches: int = 0
    failures: int = 0
    stale_uses: int = 0


class JWTVerifier:
    """Verifies bearer tokens of one issuer. Owned by :class:`Authenticator`."""

    def __init__(
        self,
        cfg: JWTIdentity,
        *,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
        min_refetch_seconds: float = JWKS_MIN_REFETCH_SECONDS,
        stale_if_error_seconds: float = JWKS_STALE_IF_ERROR_SECONDS,
    ) -> None:
        self._cfg = cfg
        self._session = session
        self._clock = clock
        self._min_refetch = min_refetch_seconds
        self._stale_grace = stale_if_error_seconds
        self._ttl = float(cfg.jwks_cache_seconds)
        self._algorithms = frozenset(a for a in cfg.algorithms if a in _ALG_KTY)
        if not self._algorithms:
            raise ValueError("no usable JWT algorithm in the policy's allow-list")
        self._audiences = list(cfg.audiences)
        # Validate the key URLs up front: a policy pointing at plaintext key material is a
        # configuration error, not something to discover on the first request.
        self._jwks_url: str | None = None
        if cfg.jwks_url is not None:
            self._jwks_url = str(check_key_url(cfg.jwks_url, "jwksURL"))
            self._discovery: str | None = None
        else:
            self._discovery = str(check_key_url(_discovery_url(cfg.issuer), "OIDC discovery"))
        self._discovered_jwks: str | None = None
        self._keys: _KeySet | None = None
        self._generation = 0
        self._last_attempt: float | None = None
        self._last_error: str | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._verified: dict[bytes, _Verified] = {}
        self._closed = False
        self.stats = _JWKSStats()

    # -- key set management -------------------------------------------------------------

    def start_prefetch(self) -> None:
        """Fetch the key set in the background now (call from a running loop)."""
        self._spawn_fetch()

    def _spawn_fetch(self) -> asyncio.Task[None]:
        if self._closed:
            raise IdentityError("the authenticator is shutting down")
        if self._inflight is None:
            self._last_attempt = self._clock()
            task = asyncio.get_running_loop().create_task(self._fetch(), name="aiguard-jwks")
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here; the awaiting callers handle it

    async def _await_fetch(self) -> bool:
        """Run (or join) one fetch; True when it produced a new key set."""
        task = self._spawn_fetch()
        try:
            await asyncio.shield(task)
        except _FetchError:
            return False
        return True

    def _may_attempt(self, now: float) -> bool:
        return (
            self._inflight is not None
            or self._last_attempt is None
            or now - self._last_attempt >= self._min_refetch
        )

    async def _fetch(self) -> None:
        self.stats.fetches += 1
        try:
            try:
                url = self._jwks_url or await self._discover()
                doc = await self._get_json(url)
                keys = parse_jwks(doc, fetched_at=self._clock(), generation=self._generation + 1)
            except _FetchError:
                raise
            except Exception as e:  # an unexpected bug must still fail closed, not crash
                log.exception("jwks fetch for issuer %s: unexpected error", self._cfg.issuer)
                raise _FetchError(f"unexpected {type(e).__name__}") from None
        except _FetchError as e:
            self.stats.failures += 1
            self._discovered_jwks = None  # rediscover next time: the jwks_uri may have moved
            if self._last_error != str(e):
                log.warning("jwks fetch for issuer %s failed: %s", self._cfg.issuer, e)
            self._last_error = str(e)
            raise
        self._last_error = None
        self._generation = keys.generation
        self._keys = keys
        self._verified.clear()
        log.info(
            "jwks for issuer %s: %d key(s) (%s)",
            self._cfg.issuer,
            len(keys.all),
            ", ".join(sorted(keys.by_kid)) or "no kid",
        )

    async def _discover(self) -> str:
        if self._discovered_jwks is not None:
            return self._discovered_jwks
        assert self._discovery is not None
        doc = await self._get_json(self._discovery)
        if not isinstance(doc, dict):
            raise _FetchError("OIDC discovery document is not a JSON object")
        if doc.get("issuer") != self._cfg.issuer:
            raise _FetchError("OIDC discovery document names a different issuer")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str):
            raise _FetchError("OIDC discovery document has no jwks_uri")
        try:
            self._discovered_jwks = str(check_key_url(uri, "jwks_uri"))
        except ValueError as e:
            raise _FetchError(str(e)) from None
        return self._discovered_jwks

    async def _get_json(self, url: str) -> Any:
        try:
            async with self._session.get(
                url,
                headers={"Accept": "application/json"},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT_SECONDS),
            ) as resp:
                if resp.status != 200:
                    raise _FetchError(f"GET {url}: HTTP {resp.status}")
                if (resp.content_length or 0) > JWKS_MAX_BYTES:
                    raise _FetchError(f"GET {url}: response larger than {JWKS_MAX_BYTES} bytes")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise _FetchError(f"GET {url}: response larger than {JWKS_MAX_BYTES} bytes")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _FetchError(f"GET {url}: {type(e).__name__}: {e}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise _FetchError(f"GET {url}: response is not JSON") from None

    async def _current_keys(self) -> _KeySet:
        """A usable key set: fresh, refreshed now, or stale within the grace; else fail."""
        now = self._clock()
        keys = self._keys
        if keys is not None:
            age = now - keys.fetched_at
            if age < self._ttl:
                if (
                    age >= self._ttl * JWKS_REFRESH_AHEAD_RATIO
                    and self._inflight is None
                    and self._may_attempt(now)
                ):
                    self._spawn_fetch()  # refresh ahead, in the background
                return keys
        if self._may_attempt(now) and await self._await_fetch():
            assert self._keys is not None
            return self._keys
        keys = self._keys
        if keys is not None and now - keys.fetched_at < self._ttl + self._stale_grace:
            self.stats.stale_uses += 1
            return keys
        raise IdentityError("the identity provider's signing keys are unavailable")

    @staticmethod
    def _select(keys: _KeySet, kid: str | None, alg: str) -> _Key | None:
        if kid is None:
            # No kid: usable only when exactly one key could have signed it.
            candidates = [k for k in keys.all if k.accepts(alg)]
            if len(candidates) != 1:
                raise IdentityError(
                    "user token has no kid and the issuer has several possible keys"
                )
            return candidates[0]
        found = keys.by_kid.get(kid)
        if not found:
            return None
        for k in found:
            if k.accepts(alg):
                return k
        # The kid exists but belongs to another key type: an algorithm-confusion attempt
        # or a broken token. No refetch: the key set already answered.
        raise IdentityError("user token's algorithm does not match its signing key")

    # -- verification -------------------------------------------------------------------

    async def verify(self, token: str, where: str) -> tuple[str, tuple[str, ...]]:
        """(user, groups) from a valid token; IdentityError otherwise."""
        if len(token) > MAX_TOKEN_BYTES:
            raise IdentityError(f"user token in {where} is too long")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        hit = self._verified.get(digest)
        keys = self._keys
        if hit is not None and keys is not None and hit.generation == keys.generation:
            self._check_times(hit.exp, hit.nbf, hit.iat, where)
            if self._clock() - keys.fetched_at < self._ttl:
                return hit.user, hit.groups
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise IdentityError(f"user token in {where} is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise IdentityError(f"user token in {where} uses an algorithm the policy forbids")
        kid = header.get("kid")
        assert kid is None or isinstance(kid, str)  # pyjwt validated it
        keys = await self._current_keys()
        key = self._select(keys, kid, alg)
        if key is None:
            # Unknown kid: the IdP may have rotated. One refetch, rate-limited.
            if self._may_attempt(self._clock()) and await self._await_fetch():
                assert self._keys is not None
                keys = self._keys
                key = self._select(keys, kid, alg)
            if key is None:
                raise IdentityError(f"user token in {where} is signed by an unknown key")
        claims = self._decode(token, key, alg, where)
        exp, nbf, iat = self._times(claims, where)
        self._check_times(exp, nbf, iat, where)
        user_v = claims.get(self._cfg.user_claim)
        if not isinstance(user_v, str):
            raise IdentityError(f"user token in {where} has no string {self._cfg.user_claim} claim")
        user = _clean_name(user_v, "the user claim", where)
        groups = _groups_from_claim(claims.get(self._cfg.groups_claim), where)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[digest] = _Verified(user, groups, exp, nbf, iat, keys.generation)
        return user, groups

    def _decode(self, token: str, key: _Key, alg: str, where: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],  # exactly one, chosen above from policy and key
                audience=self._audiences,
                issuer=self._cfg.issuer,
                options={
                    "require": ["exp", "iss", "aud"],
                    # Time claims are checked by _check_times with the injectable clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            reason = "has an invalid signature"
        except jwt.InvalidAudienceError:
            reason = "is not meant for this audience"
        except jwt.InvalidIssuerError:
            reason = "is from an issuer the policy does not trust"
        except jwt.MissingRequiredClaimError as e:
            reason = f"lacks the required {e.claim} claim"
        except jwt.InvalidKeyError:
            reason = "is signed with a key that is too weak"
        except jwt.InvalidAlgorithmError:
            reason = "uses an algorithm the policy forbids"
        except jwt.PyJWTError:
            reason = "is invalid"
        raise IdentityError(f"user token in {where} {reason}")

    @staticmethod
    def _times(claims: dict[str, Any], where: str) -> tuple[float, float | None, float | None]:
        out: list[float | None] = []
        for name in ("exp", "nbf", "iat"):
            v = claims.get(name)
            if v is None:
                out.append(None)
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise IdentityError(f"user token in {where} has a non-numeric {name} claim")
            out.append(float(v))
        exp, nbf, iat = out
        assert exp is not None  # required by _decode
        return exp, nbf, iat

    def _check_times(self, exp: float, nbf: float | None, iat: float | None, where: str) -> None:
        now = self._clock()
        leeway = self._cfg.leeway_seconds
        if exp <= now - leeway:
            raise IdentityError(f"user token in {where} has expired")
        if nbf is not None and nbf > now + leeway:
            raise IdentityError(f"user token in {where} is not valid yet")
        if iat is not None and iat > now + leeway:
            raise IdentityError(f"user token in {where} is issued in the future")

    async def close(self) -> None:
        self._closed = True
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, _FetchError):
                await task
