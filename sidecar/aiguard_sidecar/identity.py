"""Who is calling: the workload (always) and, when the policy allows, a verified end user.

Every request has a workload identity: the pod's namespace, ServiceAccount and name, taken
from the environment the injector sets (:meth:`Workload.from_env`). On top of it the policy's
``spec.access.identity`` may name end-user sources:

``jwt``
    A bearer token from the configured header, verified against the issuer's JWKS.
``trustedHeader``
    A user (and groups) asserted by the app in plain headers. Only for apps that
    authenticate their users themselves; only read when the policy configures it.

Security choices, each deliberate:

* **Algorithms come from the policy, never from the token.** The allow-list is the policy's
  ``algorithms`` intersected with a fixed set of asymmetric algorithms (RS*, PS*, ES256,
  ES384, EdDSA). ``none`` and every HMAC algorithm are rejected before any key is looked at,
  whatever the policy says, so a public key can never be used as an HMAC secret.
* **Key and algorithm must agree.** The key is selected by the token's ``kid`` and used only
  when its ``kty`` (and curve) belongs to the token's algorithm family and, when the JWK
  declares an ``alg``, that ``alg`` is the token's. JWKs carrying private material, a
  ``use`` other than ``sig`` or ``key_ops`` without ``verify`` are ignored. RSA keys below
  2048 bits are rejected.
* **Claims:** ``iss`` must equal the policy's issuer; ``aud`` must contain one of the
  policy's audiences; ``exp`` is required; ``exp``/``nbf``/``iat`` are checked with the
  policy's leeway; the user claim must be a non-empty string.
* **Fail closed.** A token header that is present but unusable is a 401 even when other
  sources could identify the caller; so is a header repeated with several values. When the
  JWKS cannot be fetched, tokens are rejected unless a previously fetched key set is still
  within its stale-if-error grace (:data:`JWKS_STALE_IF_ERROR_SECONDS` past its cache
  lifetime).
* **The IdP cannot be hammered.** Key sets are fetched by one task at a time (concurrent
  requests share it), cached for ``jwksCacheSeconds`` and refreshed ahead of expiry in the
  background. A token with an unknown ``kid`` triggers at most one refetch, and fetch attempts
  (for any reason) are at least :data:`JWKS_MIN_REFETCH_SECONDS` apart, so a stream of tokens
  with invented ``kid`` values costs the IdP one request per interval.
* **Key material travels over TLS.** The JWKS URL and the discovery URL must be ``https``
  (plain ``http`` only to a loopback address, for local development); redirects are not
  followed; the OIDC discovery document must name the configured issuer; responses are
  capped at :data:`JWKS_MAX_BYTES`.
* **No secrets in errors.** :class:`IdentityError` reasons are fixed phrases naming the header
  and the check that failed; they never contain the token or claims taken from it.

Verified tokens are remembered (keyed by their SHA-256, bounded) until the key set is next
fetched, so a client reusing one token costs one signature verification per JWKS generation;
time claims are rechecked on every use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from aiguard_api.constants import PLACEHOLDER_KEY
from aiguard_api.view import IdentitySources, TrustedHeaderIdentity

if TYPE_CHECKING:
    from aiguard_sidecar.identity_jwt import JWTVerifier

log = logging.getLogger("aiguard.sidecar.identity")

# --------------------------------------------------------------------------------------------
# Tunables (module constants so a reviewer sees every number in one place)

#: Fetch attempts (expiry refresh, unknown ``kid``, retry after a failure) are at least this
#: far apart. Bounds what a client inventing ``kid`` values can make us send to the IdP.
JWKS_MIN_REFETCH_SECONDS: Final = 10.0
#: After a failed refresh, an expired key set stays usable this long past its cache lifetime.
JWKS_STALE_IF_ERROR_SECONDS: Final = 3600.0
#: Start a background refresh when the cached key set has lived this share of its lifetime.
JWKS_REFRESH_AHEAD_RATIO: Final = 0.8
#: Timeout of one discovery or JWKS request.
JWKS_FETCH_TIMEOUT_SECONDS: Final = 5.0
#: Largest discovery document or JWKS accepted.
JWKS_MAX_BYTES: Final = 1 << 20
#: Longest token read from a header (bytes). Real ID/access tokens are a few KB.
MAX_TOKEN_BYTES: Final = 16 * 1024
#: Longest user name and group name accepted, and most groups per principal.
MAX_NAME_CHARS: Final = 256
MAX_GROUPS: Final = 1024
#: Verified tokens remembered (SHA-256 → claims); cleared on a new key set or when full.
VERIFIED_CACHE_SIZE: Final = 2048

#: Environment variables carrying the workload (Downward API), first match wins: the
#: ``AIGUARD_*`` names, then the ones the operator's injector sets today.
ENV_POD_NAMESPACE: Final = ("AIGUARD_POD_NAMESPACE", "POD_NAMESPACE")
ENV_POD_SERVICE_ACCOUNT: Final = ("AIGUARD_POD_SERVICE_ACCOUNT", "SERVICE_ACCOUNT")
ENV_POD_NAME: Final = ("AIGUARD_POD_NAME", "POD_NAME")

# Token algorithm → JWK key type. Anything not here (none, HS*, ...) is never accepted.
_ALG_KTY: Final[dict[str, str]] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "EdDSA": "OKP",
}
_ALG_CRV: Final[dict[str, frozenset[str]]] = {
    "ES256": frozenset({"P-256"}),
    "ES384": frozenset({"P-384"}),
    "EdDSA": frozenset({"Ed25519", "Ed448"}),
}
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost."})


# --------------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True, slots=True)
class Workload:
    """The pod the sidecar runs in. Always known."""

    namespace: str
    service_account: str
    pod: str

    @property
    def ref(self) -> str:
        """``namespace/serviceaccount``: how rate limits and access rules name a workload."""
        return f"{self.namespace}/{self.service_account}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Workload:
        """Read the workload from the variables the injector sets; ValueError names any missing."""
        env = os.environ if environ is None else environ
        values: list[str] = []
        missing: list[str] = []
        for names in (ENV_POD_NAMESPACE, ENV_POD_SERVICE_ACCOUNT, ENV_POD_NAME):
            value = next((env[n] for n in names if env.get(n)), None)
            if value is None:
                missing.append(" or ".join(names))
            else:
                values.append(value)
        if missing:
            raise ValueError(f"workload identity incomplete: set {'; '.join(missing)}")
        namespace, service_account, pod = values
        return cls(namespace=namespace, service_account=service_account, pod=pod)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller as access rules and rate limits see it."""

    workload: Workload
    user: str | None
    groups: tuple[str, ...]
    source: str  # "jwt" | "header" | "workload"


class IdentityError(Exception):
    """The request cannot be identified; the sidecar answers 401 with :attr:`reason`.

    The reason is safe to show the client and to log: it never contains a token or a claim.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Helpers


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of header ``name`` (lower-case), whatever mapping type carries them."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return headers.getall(name, [])
    return [v for k, v in headers.items() if k.lower() == name]


def _single_header(headers: Mapping[str, str], name: str) -> str | None:
    values = _header_values(headers, name)
    if not values:
        return None
    if len(values) > 1:
        # Two values for an identity header is either a bug or header smuggling: refuse.
        raise IdentityError(f"header {name} is sent more than once")
    return values[0]


def _clean_name(value: str, what: str, where: str) -> str:
    value = value.strip()
    if not value:
        raise IdentityError(f"{what} in {where} is empty")
    if len(value) > MAX_NAME_CHARS:
        raise IdentityError(f"{what} in {where} is longer than {MAX_NAME_CHARS} characters")
    if not value.isprintable():
        raise IdentityError(f"{what} in {where} contains control characters")
    return value


def _dedupe(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _groups_from_claim(value: Any, where: str) -> tuple[str, ...]:
    """Groups from a claim: a list of strings, or one string separated by spaces or commas."""
    if value is None:
        return ()
    raw: list[str]
    if isinstance(value, str):
        raw = value.replace(",", " ").split()
    elif isinstance(value, list):
        # Non-string members are ignored: dropping one can only take privileges away.
        raw = [v for v in value if isinstance(v, str) and v.strip()]
    else:
        raise IdentityError(f"groups claim in {where} is neither a list nor a string")
    if len(raw) > MAX_GROUPS:
        raise IdentityError(f"{where} carries more than {MAX_GROUPS} groups")
    return _dedupe([_clean_name(g, "a group", where) for g in raw])


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_key_url(url: str, what: str) -> URL:
    """A URL key material may be fetched from: https, or http to loopback only."""
    u = URL(url)
    if not u.is_absolute() or u.scheme not in ("https", "http") or not u.host:
        raise ValueError(f"{what} {url!r} is not an absolute http(s) URL")
    if u.scheme == "http" and not _is_loopback(u.host):
        raise ValueError(
            f"{what} {url!r} uses plain http; signing keys must be fetched over https "
            "(http is accepted only for a loopback address)"
        )
    return u


def _discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


# --------------------------------------------------------------------------------------------
# Authenticator


@dataclass(slots=True)
class _HeaderSource:
    cfg: TrustedHeaderIdentity
    user_header: str = field(init=False)
    groups_header: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.user_header = self.cfg.user_header.lower()
        self.groups_header = self.cfg.groups_header.lower() if self.cfg.groups_header else None


class Authenticator:
    """Turns request headers into a :class:`Principal`, from ``spec.access.identity``.

    Order: a token in the JWT header (if configured and present) decides alone; otherwise
    the trusted header (if configured and present); otherwise the workload. ``requireUser``
    turns the last case into an :class:`IdentityError`.
    """

    def __init__(
        self,
        cfg: IdentitySources,
        *,
        workload: Workload,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
        prefetch: bool = True,
        min_refetch_seconds: float = JWKS_MIN_REFETCH_SECONDS,
        stale_if_error_seconds: float = JWKS_STALE_IF_ERROR_SECONDS,
    ) -> None:
        """Raises ValueError when the JWT key URL is not https (or loopback http).

        With ``prefetch`` and a running event loop, the key set is fetched in the background
        right away so the first request does not wait for the IdP.
        """
        self._cfg = cfg
        self.workload = workload
        self._workload_principal = Principal(
            workload=workload, user=None, groups=(), source="workload"
        )
        self._jwt: JWTVerifier | None = None
        self._jwt_header: str | None = None
        names: set[str] = set()
        if cfg.jwt is not None:
            # Imported here: PyJWT + cryptography cost ~15 MB of RSS that sidecars without
            # end-user tokens should not pay (idle RSS budget: 60 MB).
            from aiguard_sidecar.identity_jwt import JWTVerifier

            self._jwt = JWTVerifier(
                cfg.jwt,
                session=session,
                clock=clock,
                min_refetch_seconds=min_refetch_seconds,
                stale_if_error_seconds=stale_if_error_seconds,
            )
            self._jwt_header = cfg.jwt.header.lower()
            names.add(self._jwt_header)
        self._header: _HeaderSource | None = None
        if cfg.trusted_header is not None:
            self._header = _HeaderSource(cfg.trusted_header)
            names.add(self._header.user_header)
            if self._header.groups_header:
                names.add(self._header.groups_header)
        self.identity_headers: frozenset[str] = frozenset(names)
        self._no_user_reason = self._describe_missing_user()
        if prefetch and self._jwt is not None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                self._jwt.start_prefetch()

    @property
    def jwt_verifier(self) -> JWTVerifier | None:
        """The JWT verifier (for metrics: ``stats``), when the policy configures one."""
        return self._jwt

    def _describe_missing_user(self) -> str:
        ways = []
        if self._jwt_header:
            ways.append(f"a user token in header {self._jwt_header}")
        if self._header:
            ways.append(f"a user in header {self._header.user_header}")
        if not ways:
            return (
                "the policy requires an end-user identity but configures no identity source "
                "(spec.access.identity.jwt or trustedHeader)"
            )
        return "the policy requires an end-user identity: send " + " or ".join(ways)

    def _token(self, headers: Mapping[str, str]) -> str | None:
        assert self._jwt_header is not None
        raw = _single_header(headers, self._jwt_header)
        if raw is None:
            return None
        value = raw.strip()
        scheme, _, rest = value.partition(" ")
        if scheme.lower() == "bearer":
            value = rest.strip()
        if not value:
            raise IdentityError(f"header {self._jwt_header} is empty")
        if value == PLACEHOLDER_KEY and self._jwt_header == "authorization":
            # The SDK's placeholder API key, not a user token: treat as absent.
            return None
        return value

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        if self._jwt is not None:
            token = self._token(headers)
            if token is not None:
                assert self._jwt_header is not None
                jwt_user, jwt_groups = await self._jwt.verify(token, self._jwt_header)
                return Principal(
                    workload=self.workload, user=jwt_user, groups=jwt_groups, source="jwt"
                )
        if self._header is not None:
            h = self._header
            raw_user = _single_header(headers, h.user_header)
            if raw_user is not None:
                where = f"header {h.user_header}"
                user = _clean_name(raw_user, "the user", where)
                groups: tuple[str, ...] = ()
                if h.groups_header is not None:
                    raw_groups = _single_header(headers, h.groups_header)
                    if raw_groups is not None:
                        gwhere = f"header {h.groups_header}"
                        parts = [p for p in raw_groups.split(",") if p.strip()]
                        if len(parts) > MAX_GROUPS:
                            raise IdentityError(f"{gwhere} carries more than {MAX_GROUPS} groups")
                        groups = _dedupe([_clean_name(p, "a group", gwhere) for p in parts])
                return Principal(workload=self.workload, user=user, groups=groups, source="header")
        if self._cfg.require_user:
            raise IdentityError(self._no_user_reason)
        return self._workload_principal

    async def close(self) -> None:
        if self._jwt is not None:
            await self._jwt.close()


def __getattr__(name: str) -> object:
    """JWT names keep working from this module, importing PyJWT on first use."""
    if name in {"JWTVerifier", "parse_jwks"}:
        from aiguard_sidecar import identity_jwt

        return getattr(identity_jwt, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
