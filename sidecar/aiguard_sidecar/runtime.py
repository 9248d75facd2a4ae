"""One policy version, compiled for serving: a :class:`Runtime`.

A runtime is built once per policy load (``policy_store.py``) and never changed afterwards;
each request takes the current one at its start and keeps it to the end, so a reload never
changes the rules under a request in flight. Building checks what the config schema cannot:

* a route's targets all speak one wire format (a request can only fail over between providers
  of its own format; mixing OpenAI-format and Anthropic providers in a route is refused);
* the JWT key URL is usable, the Redis URL resolves.

Expensive parts survive reloads when their configuration did not change: the authenticator
(JWKS cache), the rate limiter (counters), breakers (by provider name and base URL), TLS
contexts. A runtime closes only what no other live runtime shares.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from aiguard_api.errors import ConfigError
from aiguard_api.policy_types import Mode, ProviderType
from aiguard_api.view import Provider, SidecarConfig
from aiguard_sidecar import access, identity, ratelimit
from aiguard_sidecar.exchange import WireFormat
from aiguard_sidecar.hooks import Guardrails, GuardrailsFactory
from aiguard_sidecar.metrics import OTEL_PROVIDER
from aiguard_sidecar.providers import WIRE_OF, Dialect, dialect_for
from aiguard_sidecar.routing import Breaker, Breakers, RouteTable
from aiguard_sidecar.upstream import SecretFiles, TLSContexts
from aiguard_sidecar.upstream_http import Timeouts

log = logging.getLogger("aiguard.sidecar.runtime")


@dataclass(slots=True)
class ProviderRuntime:
    name: str
    type: ProviderType
    wire: WireFormat
    otel_name: str
    dialect: Dialect
    key_path: Path | None
    key_ref: str  # "Secret NAME key KEY", for messages (never the value)
    ca_path: Path | None
    min_tls: str
    server_hostname: str | None
    timeout: Timeouts
    breaker: Breaker


@dataclass(frozen=True, slots=True)
class Deps:
    """Process-wide things a runtime is built from."""

    session: aiohttp.ClientSession
    workload: identity.Workload
    secrets: SecretFiles
    tls: TLSContexts
    breakers: Breakers
    guardrails: GuardrailsFactory


@dataclass(slots=True, eq=False)
class Runtime:
    cfg: SidecarConfig
    providers: dict[str, ProviderRuntime]
    routes: RouteTable
    route_wire: dict[str, WireFormat]
    authenticator: identity.Authenticator
    limiter: ratelimit.RateLimiter
    guardrails: Guardrails
    redis_url: str | None = None
    inflight: int = 0
    retired: bool = False
    _closed: bool = field(default=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.cfg.policy.namespace}/{self.cfg.policy.name}"

    @property
    def hash(self) -> str:
        return self.cfg.hash

    @property
    def enforce(self) -> bool:
        return self.cfg.spec.mode is Mode.ENFORCE

    @property
    def max_body(self) -> int:
        return self.cfg.spec.guardrails.input.validation.max_body_bytes

    def breaker(self, provider: str) -> Breaker:
        return self.providers[provider].breaker

    async def close(self, others: list[Runtime]) -> None:
        """Close the parts no runtime in ``others`` (still alive) shares."""
        if self._closed:
            return
        self._closed = True
        if all(o.authenticator is not self.authenticator for o in others):
            await self.authenticator.close()
        if all(o.limiter is not self.limiter for o in others):
            await self.limiter.close()
        if all(o.guardrails is not self.guardrails for o in others):
            await self.guardrails.close()


def check_routes(cfg: SidecarConfig) -> dict[str, WireFormat]:
    """Each route's wire format; ConfigError when a route mixes formats."""
    types = {p.name: p.type for p in cfg.spec.providers}
    out: dict[str, WireFormat] = {}
    for i, route in enumerate(cfg.spec.routes):
        label = route.name or f"routes[{i}]"
        wires = {WIRE_OF[types[t.provider]] for t in route.targets}
        if len(wires) > 1:
            by = ", ".join(f"{t.provider} ({types[t.provider].value})" for t in route.targets)
            raise ConfigError(
                f"route {label!r} mixes OpenAI-format and Anthropic providers ({by}); a request "
                "can only fail over between providers of its own API format, so split the route"
            )
        out[label] = wires.pop()
    return out


def _provider(cfg: SidecarConfig, p: Provider, breakers: Breakers) -> ProviderRuntime:
    key = p.api_key_secret_ref
    ca = p.tls.ca_secret_ref
    t = p.timeouts
    return ProviderRuntime(
        name=p.name,
        type=p.type,
        wire=WIRE_OF[p.type],
        otel_name=OTEL_PROVIDER[p.type],
        dialect=dialect_for(p),
        key_path=cfg.secret_path(key.name, key.key) if key else None,
        key_ref=f"Secret {key.name} key {key.key}" if key else "",
        ca_path=cfg.secret_path(ca.name, ca.key) if ca else None,
        min_tls=p.tls.min_version,
        server_hostname=p.tls.server_name,
        timeout=Timeouts(connect=t.connect_seconds, read=t.read_seconds, total=t.total_seconds),
        breaker=breakers.get(p.name, p.base_url, cfg.spec.resilience),
    )


async def build(
    cfg: SidecarConfig,
    deps: Deps,
    previous: Runtime | None,
    *,
    redis_url_override: str | None = None,
    limiter_factory: Callable[..., ratelimit.RateLimiter] = ratelimit.build_limiter,
) -> Runtime:
    """Compile ``cfg``. Raises :class:`ConfigError` when it cannot be served."""
    route_wire = check_routes(cfg)
    spec = cfg.spec
    providers = {p.name: _provider(cfg, p, deps.breakers) for p in spec.providers}

    # Secrets first: TLS contexts and the Redis URL are built from them.
    paths = [p.key_path for p in providers.values() if p.key_path is not None]
    paths += [p.ca_path for p in providers.values() if p.ca_path is not None]
    redis = spec.rate_limits.redis
    redis_path = None
    if redis is not None and redis.url_secret_ref is not None:
        redis_path = cfg.secret_path(redis.url_secret_ref.name, redis.url_secret_ref.key)
        paths.append(redis_path)
    hash_key = spec.audit.hash_key_secret_ref  # read by the audit sink (audit/sink.py)
    if hash_key is not None:
        paths.append(cfg.secret_path(hash_key.name, hash_key.key))
    await deps.secrets.watch(paths)
    for p in providers.values():
        ca_pem = deps.secrets.get(p.ca_path) if p.ca_path is not None else None
        if p.ca_path is not None and ca_pem is None:
            log.warning(
                "provider CA bundle unavailable; connections to it will fail until it appears",
                extra={"fields": {"provider": p.name, "path": str(p.ca_path)}},
            )
            continue
        try:
            await deps.tls.prepare(p.min_tls, p.ca_path, ca_pem)
        except (ValueError, OSError) as e:
            raise ConfigError(f"provider {p.name!r}: CA bundle is not usable PEM: {e}") from e

    redis_url: str | None = None
    if redis is not None:
        if redis_url_override:
            redis_url = redis_url_override
        elif redis.url is not None:
            redis_url = redis.url
        elif redis_path is not None:
            data = deps.secrets.get(redis_path)
            redis_url = data.decode("utf-8", "replace").strip() if data else None
            if not redis_url:
                raise ConfigError(
                    f"rateLimits.redis.urlSecretRef: {redis_path} is missing or empty"
                )

    access.compile_access(spec.access)  # warm the compiled rules
    routes = RouteTable(spec.routes)

    # Reuse the authenticator (JWKS cache) and limiter (counters) when their config is unchanged.
    if previous is not None and previous.cfg.spec.access.identity == spec.access.identity:
        authenticator = previous.authenticator
    else:
        try:
            authenticator = identity.Authenticator(
                spec.access.identity, workload=deps.workload, session=deps.session
            )
        except ValueError as e:
            raise ConfigError(f"spec.access.identity: {e}") from e
    limiter: ratelimit.RateLimiter | None = None
    try:
        if (
            previous is not None
            and previous.cfg.spec.rate_limits == spec.rate_limits
            and previous.redis_url == redis_url
        ):
            limiter = previous.limiter
        else:
            try:
                limiter = limiter_factory(spec.rate_limits, redis_url=redis_url)
            except ValueError as e:
                raise ConfigError(f"spec.rateLimits: {e}") from e
        guardrails = deps.guardrails(cfg)
        prepare = getattr(guardrails, "prepare", None)
        if prepare is not None:  # hooks.Preparable: heavy building, off the event loop
            try:
                await prepare()
            except BaseException:
                await guardrails.close()
                raise
    except BaseException:
        if previous is None or authenticator is not previous.authenticator:
            await authenticator.close()
        if limiter is not None and (previous is None or limiter is not previous.limiter):
            await limiter.close()
        raise
    return Runtime(
        cfg=cfg,
        providers=providers,
        routes=routes,
        route_wire=route_wire,
        authenticator=authenticator,
        limiter=limiter,
        guardrails=guardrails,
        redis_url=redis_url,
    )
