"""The aiohttp applications and the resources they share, created and closed in one place.

:func:`create_app` builds the proxy application. Shared resources live under
``web.AppKey`` keys and are created/closed by ``cleanup_ctx`` generators, in this order:

1. :data:`PROVIDERS` — the keep-alive connections to the providers
   (``upstream_http.ProviderClient``: connection limit, keep-alive, no proxy from the
   environment, no redirects), and :data:`SESSION`, an ``aiohttp.ClientSession`` for the
   sidecar's other calls (JWKS and OIDC discovery, the moderation endpoint);
2. :data:`SECRETS`  — mounted Secret files and their refresh task;
3. :data:`AUDIT`    — the audit sink: durable spool + shipper to the collector (``audit/``),
   unless the caller passed one;
4. :data:`STORE` and :data:`PIPELINE` — the policy (loaded before the port serves; a bad
   initial policy fails startup) and its reload task, and the request pipeline.

Routes: every entry of :data:`~aiguard_sidecar.providers.ENDPOINTS`, and a catch-all that
answers 404 in the format its path prefix implies. Requests in absolute form
(``GET http://host/...``) and ``CONNECT`` are refused: the sidecar is not an open proxy and
only ever connects to the policy's providers.

:class:`SidecarServer` runs the proxy and the admin application (``admin.py``) on their
ports, with graceful drain; ``main.py`` and the tests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from aiguard_api import constants
from aiguard_api.view import SidecarConfig
from aiguard_sidecar import admin, policy_load, review
from aiguard_sidecar.audit.sink import AuditService, AuditSettings
from aiguard_sidecar.errors import ErrorKind, ProxyError
from aiguard_sidecar.hooks import GuardrailsFactory, no_guardrails
from aiguard_sidecar.identity import Workload
from aiguard_sidecar.metrics import Metrics
from aiguard_sidecar.pipeline import REQUEST_ID_HEADER, Pipeline
from aiguard_sidecar.policy_store import POLICY_POLL_SECONDS, PolicyStore
from aiguard_sidecar.providers import ENDPOINTS, Endpoint, inbound_for_path
from aiguard_sidecar.records import AuditSink
from aiguard_sidecar.routing import Breakers, RetryBudget
from aiguard_sidecar.runtime import Deps, Runtime, build
from aiguard_sidecar.upstream import (
    SECRET_POLL_SECONDS,
    SecretFiles,
    TLSContexts,
)
from aiguard_sidecar.upstream_http import ProviderClient

log = logging.getLogger("aiguard.sidecar")

MAX_CLIENT_BODY: Final = (64 << 20) + 1  # the schema's largest maxBodyBytes, plus one


@dataclass(frozen=True, slots=True)
class Settings:
    """Process settings (``main.py`` reads them from flags and the environment)."""

    policy_path: Path
    workload: Workload
    listen_host: str = constants.SIDECAR_PROXY_HOST
    listen_port: int = constants.SIDECAR_PROXY_PORT
    admin_host: str = "0.0.0.0"  # noqa: S104 - kubelet probes and Prometheus reach it
    admin_port: int = constants.SIDECAR_ADMIN_PORT
    secrets_dir: str | None = None
    """Overrides the compiled config's ``secretsDir`` (local runs)."""
    drain_seconds: float = 20.0
    """On SIGTERM: how long in-flight requests may take to finish."""
    policy_poll_seconds: float = POLICY_POLL_SECONDS
    secret_poll_seconds: float = SECRET_POLL_SECONDS
    connection_limit: int = 1024
    """Upstream connections open at once (all providers)."""
    keepalive_seconds: float = 30.0
    """Idle upstream connections are kept this long for reuse."""
    redis_url: str | None = None
    """Overrides the policy's Redis URL (tests, local runs)."""
    audit: AuditSettings = field(default_factory=AuditSettings)
    """Spool directory, collector URL and token (``audit/sink.py``)."""
    validate_in_child: bool = True
    """Validate policy files in a short-lived child process (``policy_load.py``: the sidecar
    never loads pydantic). False: in this process (tests that start many sidecars in one
    process, which has loaded pydantic anyway)."""


@dataclass(slots=True)
class State:
    listening: bool = False
    draining: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


SETTINGS: Final = web.AppKey("settings", Settings)
METRICS: Final = web.AppKey("metrics", Metrics)
STATE: Final = web.AppKey("state", State)
AUDIT: Final = web.AppKey("audit", AuditSink)
GUARDRAILS: Final[web.AppKey[GuardrailsFactory]] = web.AppKey("guardrails")
SESSION: Final = web.AppKey("session", aiohttp.ClientSession)
PROVIDERS: Final = web.AppKey("providers", ProviderClient)
SECRETS: Final = web.AppKey("secrets", SecretFiles)
TLS: Final = web.AppKey("tls", TLSContexts)
STORE: Final = web.AppKey("policy_store", PolicyStore)
PIPELINE: Final = web.AppKey("pipeline", Pipeline)


# ── shared resources ─────────────────────────────────────────────────────────────────────────


def _spawn(app: web.Application, coro: Awaitable[None], name: str) -> None:
    task: asyncio.Task[None] = asyncio.ensure_future(coro)
    task.set_name(name)
    app[STATE].tasks.add(task)
    task.add_done_callback(app[STATE].tasks.discard)


async def _stop_tasks(app: web.Application, prefix: str) -> None:
    tasks = [t for t in app[STATE].tasks if t.get_name().startswith(prefix)]
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    connector = aiohttp.TCPConnector(
        limit=s.connection_limit,
        limit_per_host=0,
        keepalive_timeout=s.keepalive_seconds,
        ttl_dns_cache=60,
        enable_cleanup_closed=False,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # never route provider traffic through an environment proxy
        auto_decompress=True,
        raise_for_status=False,
    )
    app[SESSION] = session
    providers = ProviderClient(limit=s.connection_limit, keepalive_seconds=s.keepalive_seconds)
    app[PROVIDERS] = providers
    yield
    await providers.close()
    await session.close()


async def _secrets_ctx(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]
    secrets = SecretFiles(
        on_reload=lambda ok: metrics.secret_reloads.labels("success" if ok else "failure").inc()
    )
    app[SECRETS] = secrets
    app[TLS] = TLSContexts()
    _spawn(app, secrets.run(app[SETTINGS].secret_poll_seconds), "secrets-refresh")
    yield
    await _stop_tasks(app, "secrets-")


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """The audit sink: the one ``create_app`` was given, else an :class:`AuditService`
    (spool + shipper when a collector URL is set; see ``audit/sink.py``). Closed by
    :func:`_policy_ctx` after the last request (closing is idempotent)."""
    if AUDIT in app:
        yield
        return
    s = app[SETTINGS]

    def current() -> SidecarConfig | None:
        return app[STORE].current.cfg if STORE in app and app[STORE].loaded else None

    service = AuditService(
        s.audit, workload=s.workload, metrics=app[METRICS], config=current, secrets=app[SECRETS]
    )
    await service.start()
    app[AUDIT] = service
    try:
        yield
    finally:
        await service.close()


async def _policy_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    metrics = app[METRICS]
    secrets, tls = app[SECRETS], app[TLS]
    breakers = Breakers(on_change=metrics.set_breaker)
    deps = Deps(
        session=app[SESSION],
        workload=s.workload,
        secrets=secrets,
        tls=tls,
        breakers=breakers,
        guardrails=app[GUARDRAILS],
    )

    async def builder(cfg: SidecarConfig, previous: Runtime | None) -> Runtime:
        rt = await build(cfg, deps, previous, redis_url_override=s.redis_url)
        for gone in breakers.retain(list(rt.providers)):
            metrics.forget_provider(gone)
        return rt

    store = PolicyStore(
        s.policy_path,
        builder=builder,
        metrics=metrics,
        secrets_dir=s.secrets_dir,
        parse=policy_load.parse if s.validate_in_child else policy_load.parse_here,
    )
    await store.load()
    app[STORE] = store

    async def ca_changed(path: Path, data: bytes | None) -> None:
        """A rotated CA bundle: build its TLS context off the hot path."""
        if data is None or not store.loaded:
            return
        for p in store.current.providers.values():
            if p.ca_path == path:
                try:
                    await tls.prepare(p.min_tls, path, data)
                except (ValueError, OSError) as e:
                    log.error(
                        "rotated CA bundle is not usable",
                        extra={"fields": {"provider": p.name, "error": str(e)}},
                    )

    secrets.on_change(ca_changed)
    budget = RetryBudget(store.current.cfg.spec.resilience.retry_budget_percent)
    app[PIPELINE] = Pipeline(
        store=store,
        providers=app[PROVIDERS],
        secrets=secrets,
        tls=tls,
        metrics=metrics,
        audit=app[AUDIT],
        budget=budget,
    )
    reviewer = review.from_settings(s.audit, s.workload)
    app[PIPELINE].reviewer = reviewer

    async def watch() -> None:
        while True:
            await asyncio.sleep(s.policy_poll_seconds)
            try:
                if await store.check():
                    budget.percent = store.current.cfg.spec.resilience.retry_budget_percent
            except Exception:
                log.exception("policy poll failed")

    _spawn(app, watch(), "policy-watch")
    yield
    await _stop_tasks(app, "policy-")
    await store.close()
    await app[AUDIT].close()
    if reviewer is not None:
        await reviewer.close()


# ── handlers ─────────────────────────────────────────────────────────────────────────────────


_PROXY_REFUSED: Final = ProxyError(
    ErrorKind.PERMISSION,
    "aiguard: this sidecar is not an open proxy; it serves only the provider APIs under "
    "/openai, /anthropic and /azure and connects only to the policy's providers",
    code="proxy_request_refused",
)


@web.middleware
async def _not_a_proxy(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse forward-proxy requests: absolute-form targets (``GET http://host/...``) and
    ``CONNECT``, whatever path they name."""
    if request.method == "CONNECT" or request.raw_path[:1] != "/":
        refused = web.Response(
            status=_PROXY_REFUSED.status,
            body=inbound_for_path("").error_body(_PROXY_REFUSED),
            content_type="application/json",
        )
        refused.force_close()
        return refused
    return await handler(request)


def _handler(
    endpoints: list[Endpoint],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """One handler per path. Every method reaches it: the pipeline answers a method the path
    does not serve with 405 in the client's format (and an audit record)."""
    by_method = {e.method: e for e in endpoints}
    default = endpoints[0]

    async def handle(request: web.Request) -> web.StreamResponse:
        endpoint = by_method.get(request.method, default)
        return await request.app[PIPELINE].handle(request, endpoint)

    handle.__name__ = f"handle_{default.api.value.replace('.', '_')}"
    return handle


async def _unknown(request: web.Request) -> web.StreamResponse:
    err = ProxyError(
        ErrorKind.NOT_FOUND,
        f"aiguard: unknown path {request.method} {request.path[:256]}; this sidecar serves "
        "/openai/v1/{chat/completions,responses[/{id}],embeddings,models}, "
        "/anthropic/v1/messages[/count_tokens], /anthropic/v1/models, "
        "/azure/openai/deployments/{deployment}/{chat/completions,embeddings} and "
        "/azure/openai/v1/...",
        code="unknown_path",
    )
    return web.Response(
        status=404,
        body=inbound_for_path(request.path).error_body(err),
        content_type="application/json",
        headers={REQUEST_ID_HEADER: "-"},
    )


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    audit: AuditSink | None = None,
    guardrails: GuardrailsFactory = no_guardrails,
) -> web.Application:
    app = web.Application(
        client_max_size=MAX_CLIENT_BODY,
        middlewares=[_not_a_proxy],
        handler_args={"max_field_size": 16384},
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics if metrics is not None else Metrics()
    app[STATE] = State()
    if audit is not None:
        app[AUDIT] = audit
    app[GUARDRAILS] = guardrails
    app.cleanup_ctx.extend([_session_ctx, _secrets_ctx, _audit_ctx, _policy_ctx])
    by_path: dict[str, list[Endpoint]] = {}
    for endpoint in ENDPOINTS:
        by_path.setdefault(endpoint.path, []).append(endpoint)
    for path, endpoints in by_path.items():
        route = path.replace("/models/{model}", "/models/{model:.+}")
        app.router.add_route("*", route, _handler(endpoints))
    app.router.add_route("*", "/{tail:.*}", _unknown)
    return app


def readiness(app: web.Application) -> str | None:
    state = app[STATE]
    if state.draining:
        return "draining"
    if STORE not in app or not app[STORE].loaded:
        return "no policy loaded"
    if not state.listening:
        return "proxy port not listening"
    return None


# ── running both servers ─────────────────────────────────────────────────────────────────────


class SidecarServer:
    """The proxy and the admin server on their ports. ``port=0`` picks a free port."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        audit: AuditSink | None = None,
        guardrails: GuardrailsFactory = no_guardrails,
    ) -> None:
        self.settings = settings
        self.app = create_app(settings, metrics=metrics, audit=audit, guardrails=guardrails)
        self.admin_app = admin.create_admin_app(self.app[METRICS], lambda: readiness(self.app))
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=settings.drain_seconds
        )
        self._admin_runner = web.AppRunner(self.admin_app, access_log=None, handle_signals=False)
        self.port = 0
        self.admin_port = 0
        self._stopped = False

    async def start(self) -> None:
        s = self.settings
        admin_started = False
        try:
            # The admin port first: /healthz answers and /readyz says 503 while the policy
            # (and its guardrail engines, which can take seconds to compile) loads.
            await self._admin_runner.setup()
            admin_started = True
            admin_site = web.TCPSite(self._admin_runner, s.admin_host, s.admin_port)
            await admin_site.start()
            self.admin_port = _bound_port(self._admin_runner)
            await self._runner.setup()  # runs cleanup_ctx: session, secrets, audit, policy
            site = web.TCPSite(self._runner, s.listen_host, s.listen_port, backlog=1024)
            await site.start()
            self.port = _bound_port(self._runner)
        except BaseException:
            if admin_started:
                await self._admin_runner.cleanup()
            await self._runner.cleanup()  # closes what the cleanup contexts had opened
            self._stopped = True
            raise
        self.app[STATE].listening = True
        log.info(
            "aiguard sidecar listening",
            extra={
                "fields": {
                    "proxy": f"{s.listen_host}:{self.port}",
                    "admin": f"{s.admin_host}:{self.admin_port}",
                    "policy": self.app[STORE].current.name,
                    "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                }
            },
        )

    @property
    def url(self) -> str:
        return f"http://{self.settings.listen_host}:{self.port}"

    @property
    def admin_url(self) -> str:
        host = self.settings.admin_host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.admin_port}"  # noqa: S104

    async def stop(self) -> None:
        """Drain: readiness fails, the port stops accepting, in-flight requests get up to
        ``drain_seconds`` to finish, then everything closes. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.app[STATE].draining = True
        log.info(
            "draining",
            extra={"fields": {"drain_seconds": self.settings.drain_seconds}},
        )
        await self._runner.cleanup()
        await self._admin_runner.cleanup()
        log.info("stopped")

    async def __aenter__(self) -> SidecarServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _bound_port(runner: web.AppRunner) -> int:
    addresses = runner.addresses
    if not addresses:
        raise RuntimeError("the server is not listening")
    addr = addresses[0]
    return int(addr[1]) if isinstance(addr, tuple) else 0
