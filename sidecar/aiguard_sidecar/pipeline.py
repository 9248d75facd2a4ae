"""One request's path through the sidecar.

::

    read body (≤ maxBodyBytes) → adapter.parse → Exchange
      → identity (401) → access rules (403) → route lookup (404 / 502 wrong format)
      → rate limits (429 + Retry-After) → input guardrails (400)
      → attempts over the route's targets (breakers, retry budget, failover)
          key from the Secret file, client credentials dropped, TLS ≥ policy minimum
      → relay: JSON whole, or SSE event by event (never buffered whole); output hooks;
        usage and served model read on the way
      → RequestRecord → AuditSink (before the response completes) → metrics

In ``mode: audit`` identity, access, rate-limit and guardrail denials are recorded as decisions
and the request goes on unchanged. Errors are answered in the caller's format with a message
naming the policy and the rule that decided (:class:`~aiguard_sidecar.errors.ProxyError`).

:class:`Pipeline` holds the process-wide pieces; the handler functions of ``app.py`` only pass
it the request and the endpoint. Nothing here blocks the event loop: the only file access
is the cached secret lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from aiguard_api.policy_types import FailureMode, Operation, UnscannableAction
from aiguard_sidecar import access, identity, ratelimit, review
from aiguard_sidecar.drift import DriftTracker
from aiguard_sidecar.errors import ErrorKind, ProxyError
from aiguard_sidecar.exchange import Api, EventAction, Exchange, ResponseInfo, WireFormat, dumps
from aiguard_sidecar.hooks import ALLOW, GuardDecision, NoGuardrails, StreamGuard, Verdict
from aiguard_sidecar.metrics import Metrics
from aiguard_sidecar.moderation_endpoint import EndpointError
from aiguard_sidecar.policy_store import PolicyStore
from aiguard_sidecar.providers import Endpoint, Inbound
from aiguard_sidecar.providers.sse import SSEError, SSESplitter
from aiguard_sidecar.records import AuditSink, AuditUnavailable, Decision, RequestRecord
from aiguard_sidecar.routing import (
    AttemptPlan,
    AttemptRecord,
    CompiledRoute,
    Failure,
    RetryBudget,
    StoredResponse,
    StoredResponses,
)
from aiguard_sidecar.runtime import ProviderRuntime, Runtime
from aiguard_sidecar.upstream import (
    UPSTREAM_ERRORS,
    SecretFiles,
    TLSContexts,
    UpstreamFailure,
    classify,
    discard,
    forward_headers,
    response_headers,
    send,
    tls_info,
)
from aiguard_sidecar.upstream_http import ProviderClient, ProviderResponse

log = logging.getLogger("aiguard.sidecar.pipeline")

# A non-streamed request in flight this long is journaled (audit/spool.py "In flight").
JOURNAL_AFTER_SECONDS: Final = 1.0

REQUEST_ID_HEADER: Final = "x-aiguard-request-id"
CLIENT_CLOSED: Final = 499  # nginx's code for "the client went away"
_JSON: Final = "application/json"

# Reason codes (ProxyError.code) that are policy decisions rather than errors.
_POLICY_CODES: Final = frozenset(
    {
        "identity_failed",
        "access_denied",
        "rate_limited",
        "guardrail_blocked",
        "unscannable_content",
        "review_denied",
    }
)


class UnreadableResponse(ValueError):
    """A successful provider response the output guardrails cannot read."""


class _AttemptFailed(Exception):
    """A response broke before anything reached the client: the next target may be tried."""

    def __init__(self, failure: UpstreamFailure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


class RelayResponse(web.StreamResponse):
    """A relayed stream whose status line and headers leave with its first bytes: one write
    (one TCP segment, one wake-up of the client) instead of two before the first token. The
    relay prepares it only when it has bytes to write, and ``write_eof`` sends buffered
    headers too. (``_send_headers_immediately`` is aiohttp's switch for this: ``web.Response``
    turns it off the same way.)"""

    _send_headers_immediately = False


@dataclass(slots=True)
class _Relayed:
    """A provider error response kept while trying the next target."""

    status: int
    headers: dict[str, str]
    body: bytes


class Pipeline:
    def __init__(
        self,
        *,
        store: PolicyStore,
        providers: ProviderClient,
        secrets: SecretFiles,
        tls: TLSContexts,
        metrics: Metrics,
        audit: AuditSink,
        budget: RetryBudget,
    ) -> None:
        self.store = store
        self.providers = providers
        self.secrets = secrets
        self.tls = tls
        self.metrics = metrics
        self.audit = audit
        self.budget = budget
        self.drift = DriftTracker(metrics)
        self.reviewer: review.Reviewer | None = None
        """Asks the collector for human approvals (``review.py``); None: no collector."""
        self.stored = StoredResponses()
        """Responses API responses created through this sidecar (``_stored_response``)."""
        self.inflight = 0
        # Read at scrape time: no gauge lock taken twice per request.
        metrics.inflight.set_function(lambda: self.inflight)
        self._id_prefix = os.urandom(4).hex()
        self._seq = 0

    def _request_id(self) -> str:
        self._seq += 1
        return f"{self._id_prefix}{self._seq:010x}"

    # ── entry point ──────────────────────────────────────────────────────────────────────────

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        rt = self.store.acquire()
        loop = asyncio.get_running_loop()
        start = loop.time()
        rec = RequestRecord(
            request_id=self._request_id(),
            started_at=time.time(),
            started_mono=start,
            policy=rt.name,
            policy_hash=rt.hash,
            mode=rt.cfg.spec.mode.value,
            method=request.method,
            path=request.path,
            wire=endpoint.inbound.wire.value,
            api=endpoint.api.value,
        )
        self.inflight += 1
        response: web.StreamResponse | None = None
        try:
            try:
                response = await self._serve(request, endpoint, rt, rec, start)
            except ProxyError as err:
                response = await self._error(endpoint.inbound, err, rec, rt, start)
            return response
        except asyncio.CancelledError:
            rec.status, rec.outcome = CLIENT_CLOSED, "client_closed"
            raise
        except Exception:
            log.exception("request failed", extra={"fields": {"request_id": rec.request_id}})
            internal = ProxyError(
                ErrorKind.INTERNAL, "aiguard: internal error", code="internal_error"
            )
            response = await self._error(endpoint.inbound, internal, rec, rt, start)
            return response
        finally:
            self.inflight -= 1
            self.store.release(rt)
            self._observe(rec, rt, loop.time() - start)
            if rec.exchange is not None and rec.exchange.wire is WireFormat.OPENAI:
                self._track_stored(rec, rec.exchange)

    # ── the path ─────────────────────────────────────────────────────────────────────────────

    async def _serve(
        self,
        request: web.Request,
        endpoint: Endpoint,
        rt: Runtime,
        rec: RequestRecord,
        start: float,
    ) -> web.StreamResponse:
        if request.method != endpoint.method:
            raise ProxyError(
                ErrorKind.METHOD_NOT_ALLOWED,
                f"aiguard: {request.method} is not allowed on {request.path} "
                f"(use {endpoint.method})",
                code="method_not_allowed",
            )
        inbound = endpoint.inbound
        raw = await _read_body(request, rt.max_body) if endpoint.method == "POST" else b""
        match = request.match_info
        ex = inbound.parse(endpoint.api, raw, path_model=match.get("model"))
        ex.resource_id = match.get("id")
        rec.exchange = ex
        rec.operation = ex.operation.value
        rec.stream = ex.stream
        rec.model_requested = ex.model or None
        if ex.unscanned:
            rec.unscanned = {k.value: n for k, n in ex.unscanned.items()}
            for kind, n in ex.unscanned.items():
                self.metrics.unscanned_parts.labels(kind.value).inc(n)

        principal = await self._identify(request, rt, rec)

        if ex.api is Api.MODELS:
            return await self._models(inbound, rt, rec, principal, start)
        stored = self._stored_response(rt, rec, ex, principal) if ex.resource_id else None

        d = access.decide(
            rt.cfg.spec.access,
            principal,
            model=ex.model,
            operation=ex.operation,
            uses_tools=ex.uses_tools,
        )
        self._decide(
            rec,
            rt,
            Decision(
                "access",
                d.allowed,
                f"spec.access.rules[{d.rule}]" if d.rule else "spec.access.rules",
                d.reason,
                enforced=rt.enforce or d.allowed,
            ),
            ErrorKind.PERMISSION,
            "access_denied",
            f"aiguard policy {rt.name}: {d.reason}",
        )

        route = rt.routes.match(ex.model)
        if route is None:
            raise ProxyError(
                ErrorKind.NOT_FOUND,
                f"aiguard policy {rt.name}: no route for model {_short(ex.model)!r} (spec.routes)",
                code="model_not_routed",
            )
        rec.route = route.name
        if rt.route_wire[route.name] is not ex.wire:
            raise ProxyError(
                ErrorKind.BAD_GATEWAY,
                f"aiguard policy {rt.name}: route {route.name!r} sends model "
                f"{_short(ex.model)!r} to {rt.route_wire[route.name].value}-format providers, "
                f"but this request uses the {ex.wire.value} API; call the model through "
                f"/{rt.route_wire[route.name].value}/",
                code="wrong_api_format",
                rule=f"routes[{route.name}]",
            )
        if stored is not None:
            route = _holding(rt, route, stored, ex)

        # No limits configured: no limiter call (and no lease to release).
        lease = (
            await self._limit(rt, rec, principal, ex) if rt.cfg.spec.rate_limits.limits else None
        )
        try:
            await self._check_input(rt, rec, ex, request=request)
            return await self._forward(request, rt, rec, ex, route, inbound, start)
        finally:
            if lease is not None:
                info = rec.response
                used_in = info.input_tokens if info is not None else None
                if used_in is None:  # a token count consumes none
                    used_in = 0 if ex.api is Api.COUNT_TOKENS else ex.est_input_tokens
                await lease.release(
                    input_tokens=used_in,
                    output_tokens=info.output_tokens_or_estimate() if info is not None else 0,
                )

    async def _identify(
        self, request: web.Request, rt: Runtime, rec: RequestRecord
    ) -> identity.Principal:
        auth = rt.authenticator
        try:
            principal = await auth.authenticate(request.headers)
        except identity.IdentityError as e:
            self._decide(
                rec,
                rt,
                Decision("identity", False, "spec.access.identity", e.reason, enforced=rt.enforce),
                ErrorKind.AUTHENTICATION,
                "identity_failed",
                f"aiguard policy {rt.name}: {e.reason} (spec.access.identity)",
            )
            principal = identity.Principal(
                workload=auth.workload, user=None, groups=(), source="workload"
            )
        rec.principal = principal
        return principal

    async def _limit(
        self, rt: Runtime, rec: RequestRecord, principal: identity.Principal, ex: Exchange
    ) -> ratelimit.Lease | None:
        result = await rt.limiter.acquire(
            principal, model=ex.model, est_input_tokens=ex.est_input_tokens
        )
        if isinstance(result, ratelimit.Denied):
            rule = f"spec.rateLimits.limits[{result.limit}]"
            self._decide(
                rec,
                rt,
                Decision("rate_limit", False, rule, result.reason, enforced=rt.enforce),
                ErrorKind.RATE_LIMITED,
                "rate_limited",
                f"aiguard policy {rt.name}: rate limit {result.limit!r} exceeded"
                + (f": {result.reason}" if result.reason else ""),
                retry_after=result.retry_after,
            )
            return None
        return result

    async def _check_input(
        self, rt: Runtime, rec: RequestRecord, ex: Exchange, *, request: web.Request | None = None
    ) -> None:
        inputs = rt.cfg.spec.guardrails.input
        if ex.unscanned and inputs.unscannable is UnscannableAction.BLOCK:
            kinds = ", ".join(sorted(k.value for k in ex.unscanned))
            self._decide(
                rec,
                rt,
                Decision(
                    "guardrail",
                    False,
                    "guardrails.input.unscannable",
                    f"content no guardrail can read: {kinds}",
                    enforced=rt.enforce,
                ),
                ErrorKind.INVALID_REQUEST,
                "unscannable_content",
                f"aiguard policy {rt.name}: the request carries content no guardrail can read "
                f"({kinds}) and guardrails.input.unscannable is block",
            )
        if type(rt.guardrails) is NoGuardrails:
            return  # nothing configured: no await, no decision
        try:
            verdict = await rt.guardrails.check_input(ex)
        except Exception as e:
            verdict = self._guardrail_failed(rt, rec, "input", e)
        if verdict.counts:
            rec.count_findings("input", verdict.counts)
        if verdict.verdict is Verdict.REVIEW:  # held until a person decides (review.py)
            verdict = await review.hold(
                self.reviewer, rt, rec, ex, verdict, gone=_gone(request) if request else None
            )
        self._guard_verdict(rec, rt, verdict, "blocked")

    def _stored_response(
        self, rt: Runtime, rec: RequestRecord, ex: Exchange, principal: identity.Principal
    ) -> StoredResponse:
        """``GET``/``DELETE /responses/{id}`` name no model. The rule: they are served only for
        responses created through this sidecar, which remembers the provider that holds each
        and the model the client asked for (:class:`~aiguard_sidecar.routing.StoredResponses`);
        only to the end user who created it when that request carried one; and only while the
        access rules still grant the caller the ``responses`` operation on that model and its
        route still lists that provider (checked by the caller). Any other id is not forwarded
        anywhere: 404 (default deny)."""
        rid = ex.resource_id or ""
        entry = self.stored.get(rid)
        if entry is None:
            raise ProxyError(
                ErrorKind.NOT_FOUND,
                f"aiguard policy {rt.name}: response {_short(rid)!r} was not created through "
                "this sidecar since it started, so no provider or model access rule can be "
                "determined for it",
                code="response_not_found",
                param="response_id",
            )
        ex.model = entry.model
        rec.model_requested = entry.model
        if entry.user is not None and principal.user != entry.user:
            self._decide(
                rec,
                rt,
                Decision(
                    "access",
                    False,
                    "spec.access.rules",
                    "stored responses are served only to the user who created them",
                    enforced=rt.enforce,
                ),
                ErrorKind.PERMISSION,
                "access_denied",
                f"aiguard policy {rt.name}: response {_short(rid)!r} was created by another user",
            )
        return entry

    def _track_stored(self, rec: RequestRecord, ex: Exchange) -> None:
        """Remember a stored response this request created; forget one it deleted."""
        if rec.outcome != "ok" or not 200 <= rec.status < 300 or rec.provider is None:
            return
        if ex.api is Api.RESPONSES and rec.response_id:
            if ex.body is not None and ex.body.get("store") is False:
                return  # not stored by the provider: nothing to retrieve later
            user = rec.principal.user if rec.principal is not None else None
            self.stored.remember(rec.response_id, StoredResponse(rec.provider, ex.model, user))
        elif ex.api is Api.RESPONSE_DELETE and ex.resource_id:
            self.stored.forget(ex.resource_id)

    def _guard_verdict(
        self, rec: RequestRecord, rt: Runtime, verdict: GuardDecision, what: str
    ) -> None:
        """Record a guardrail verdict that found something; raise its block when the policy
        enforces. ``what`` begins the message (``blocked``, ``the response was blocked``)."""
        if not (verdict.blocked or verdict.findings):
            return
        self._decide(
            rec,
            rt,
            Decision(
                "guardrail",
                not verdict.blocked,
                verdict.rule,
                verdict.reason,
                enforced=rt.enforce or not verdict.blocked,
            ),
            ErrorKind.INVALID_REQUEST,
            "guardrail_blocked",
            f"aiguard policy {rt.name}: {what} by {verdict.rule or 'a guardrail'}"
            + (f": {verdict.reason}" if verdict.reason else ""),
        )

    def _guardrail_failed(
        self, rt: Runtime, rec: RequestRecord, side: str, error: Exception
    ) -> GuardDecision:
        """A guardrail raised: ``spec.failureMode`` says whether the request goes on."""
        rule = f"guardrails.{side}"
        if isinstance(error, UnreadableResponse):
            log.warning(
                "unreadable provider response: output guardrails could not check it",
                extra={"fields": {"request_id": rec.request_id, "provider": rec.provider}},
            )
            if rt.cfg.spec.failure_mode is not FailureMode.OPEN:
                rec.decisions.append(
                    Decision("guardrail", False, rule, "unreadable response", enforced=True)
                )
                raise ProxyError(
                    ErrorKind.BAD_GATEWAY,
                    f"aiguard policy {rt.name}: the provider's response could not be read, so "
                    "the output guardrails could not check it (spec.failureMode is closed)",
                    code="unreadable_response",
                    rule=rule,
                )
        elif isinstance(error, EndpointError):  # an outage, not a bug: one line, no traceback
            log.warning(
                "moderation endpoint failed",
                extra={"fields": {"request_id": rec.request_id, "side": side, "error": str(error)}},
            )
        else:
            log.exception(
                "guardrail failed",
                extra={"fields": {"request_id": rec.request_id, "side": side}},
            )
        if rt.cfg.spec.failure_mode is FailureMode.OPEN:
            reason = f"guardrail error ({type(error).__name__}); failureMode open"
            rec.decisions.append(Decision("guardrail", True, rule, reason))
            return ALLOW
        rec.decisions.append(Decision("guardrail", False, rule, "guardrail error", enforced=True))
        raise ProxyError(
            ErrorKind.UNAVAILABLE,
            f"aiguard policy {rt.name}: a {side} guardrail failed and spec.failureMode is closed",
            code="guardrail_error",
            rule=rule,
            retry_after=1.0,
        ) from error

    def _decide(
        self,
        rec: RequestRecord,
        rt: Runtime,
        decision: Decision,
        kind: ErrorKind,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        """Record a decision; raise the denial when it is one and the policy enforces."""
        rec.decisions.append(decision)
        if not decision.allowed and decision.enforced:
            raise ProxyError(kind, message, code=code, rule=decision.rule, retry_after=retry_after)

    async def _models(
        self,
        inbound: Inbound,
        rt: Runtime,
        rec: RequestRecord,
        principal: identity.Principal,
        start: float,
    ) -> web.StreamResponse:
        """The models routes name exactly and the caller may use (answered locally)."""
        models = [
            m
            for m in rt.routes.exact_models()
            if not rt.enforce
            or access.decide(
                rt.cfg.spec.access,
                principal,
                model=m,
                operation=Operation.MODELS,
                uses_tools=False,
            ).allowed
        ]
        rec.status = 200
        await self._emit(rec, rt, started=False)
        return web.Response(
            body=inbound.models_body(models),
            content_type=_JSON,
            headers={REQUEST_ID_HEADER: rec.request_id},
        )

    # ── upstream attempts ────────────────────────────────────────────────────────────────────

    async def _forward(
        self,
        request: web.Request,
        rt: Runtime,
        rec: RequestRecord,
        ex: Exchange,
        route: CompiledRoute,
        inbound: Inbound,
        start: float,
    ) -> web.StreamResponse:
        """The upstream attempts. A non-streamed request still waiting after
        :data:`JOURNAL_AFTER_SECONDS` is journaled in flight like a stream (``audit.begin``),
        so a sidecar killed while the provider generates still leaves an ``interrupted``
        event; quick requests skip the marker's file write."""
        begin = getattr(self.audit, "begin", None)

        def journal_in_flight() -> None:
            if begin is not None and not rec.emitted:  # its final event is not queued yet
                begin(rec)

        journal = (
            asyncio.get_running_loop().call_later(JOURNAL_AFTER_SECONDS, journal_in_flight)
            if begin is not None and not ex.stream
            else None
        )
        try:
            return await self._attempts(request, rt, rec, ex, route, inbound, start)
        finally:
            if journal is not None:
                journal.cancel()

    async def _attempts(
        self,
        request: web.Request,
        rt: Runtime,
        rec: RequestRecord,
        ex: Exchange,
        route: CompiledRoute,
        inbound: Inbound,
        start: float,
    ) -> web.StreamResponse:
        plan = AttemptPlan(route, rt.cfg.spec.resilience, rt.breaker, self.budget)
        rec.attempts = plan.path
        loop = asyncio.get_running_loop()
        kept: _Relayed | None = None
        failure: UpstreamFailure | None = None
        failed_provider: str | None = None
        cause = ""  # why the previous attempt failed (failover metric label)
        strip = rt.authenticator.identity_headers
        while (target := plan.next()) is not None:
            prov = rt.providers[target.provider]
            if cause:
                self.metrics.failovers.labels(route.name, failed_provider or "", cause).inc()
            model = target.model or ex.model
            attempt = AttemptRecord(prov.name, model, "ok")
            plan.path.append(attempt)
            t0 = loop.time()
            try:
                resp = await self._attempt(request, prov, ex, model, strip)
            except UpstreamFailure as f:
                attempt.outcome = f.failure.value
                attempt.seconds = loop.time() - t0
                rec.upstream_seconds += attempt.seconds
                self._attempt_failed(plan, prov, f, rec)
                failure, failed_provider, kept, cause = f, prov.name, None, f.failure.value
                if not plan.may_fail_over(f.failure):
                    break
                continue
            status = resp.status
            attempt.status = status
            rec.tls_version, rec.tls_cipher = tls_info(resp)
            if status >= 500 or status == 429:
                fail = Failure.SERVER_ERROR if status >= 500 else Failure.RATE_LIMITED
                attempt.outcome = fail.value
                body = await discard(resp)
                attempt.seconds = loop.time() - t0
                rec.upstream_seconds += attempt.seconds
                self.metrics.upstream_errors.labels(prov.name, fail.value).inc()
                if plan.counts_against_breaker(fail):
                    prov.breaker.failure()
                else:
                    prov.breaker.release()
                kept = _Relayed(status, response_headers(resp.headers), body)
                failure, failed_provider, cause = None, prov.name, fail.value
                log.warning(
                    "upstream answered an error",
                    extra={"fields": _attempt_fields(rec, prov, fail.value, status)},
                )
                if not plan.may_fail_over(fail):
                    break
                continue
            if status == 401:
                await discard(resp)
                prov.breaker.release()
                attempt.outcome = "http_401"
                self.metrics.upstream_errors.labels(prov.name, "auth").inc()
                raise ProxyError(
                    ErrorKind.BAD_GATEWAY,
                    f"aiguard: provider {prov.name!r} rejected the sidecar's API key "
                    f"(HTTP 401); check {prov.key_ref or 'its apiKeySecretRef'}",
                    code="provider_key_rejected",
                )
            rec.provider, rec.model_target = prov.name, model
            try:
                return await self._relay(request, rt, rec, ex, inbound, prov, resp, start)
            except _AttemptFailed as e:
                attempt.outcome = e.failure.failure.value
                self._attempt_failed(plan, prov, e.failure, rec)
                failure, failed_provider, kept = e.failure, prov.name, None
                cause = e.failure.failure.value
                rec.provider = rec.model_target = None
                if not plan.may_fail_over(e.failure.failure):
                    break
                continue
            finally:
                attempt.seconds = loop.time() - t0
                rec.upstream_seconds += attempt.seconds

        # No target answered usefully.
        if kept is not None:
            rec.provider = failed_provider
            return await self._relay_kept(kept, rec, rt)
        if failure is not None:
            timeout = failure.failure is Failure.TIMEOUT
            raise ProxyError(
                ErrorKind.GATEWAY_TIMEOUT if timeout else ErrorKind.BAD_GATEWAY,
                f"aiguard: route {route.name!r}: provider {failed_provider!r} failed: "
                f"{failure.detail}" + _stopped(plan),
                code="upstream_timeout" if timeout else "upstream_error",
            )
        wait = plan.retry_after()
        raise ProxyError(
            ErrorKind.UNAVAILABLE,
            f"aiguard: route {route.name!r}: every provider is unavailable (circuit breaker "
            "open after repeated failures)" + _stopped(plan),
            code="providers_unavailable",
            retry_after=wait if wait is not None else 1.0,
        )

    async def _attempt(
        self,
        request: web.Request,
        prov: ProviderRuntime,
        ex: Exchange,
        model: str,
        strip: frozenset[str],
    ) -> ProviderResponse:
        """Send one attempt to ``prov``; raises :class:`UpstreamFailure`."""
        key: str | None = None
        if prov.key_path is not None:
            key = self.secrets.key(prov.key_path)
            if key is None:
                raise UpstreamFailure(
                    Failure.NO_KEY,
                    f"its key ({prov.key_ref}) is not mounted or is empty "
                    f"({self.secrets.error(prov.key_path) or 'unreadable'})",
                )
        try:
            call = prov.dialect.build(ex, model)
        except ProxyError as e:
            raise UpstreamFailure(Failure.UNSUPPORTED, e.message.removeprefix("aiguard: ")) from e
        ssl_context = None
        if call.url.scheme == "https":
            ca_pem = self.secrets.get(prov.ca_path) if prov.ca_path is not None else None
            if prov.ca_path is not None and ca_pem is None:
                raise UpstreamFailure(
                    Failure.NO_KEY, f"its CA bundle ({prov.ca_path}) is not mounted", tls=True
                )
            ssl_context = self.tls.get(prov.min_tls, prov.ca_path, ca_pem)
            if ssl_context is None:  # a CA bundle rotated since the last refresh
                try:
                    ssl_context = await self.tls.prepare(prov.min_tls, prov.ca_path, ca_pem)
                except (ValueError, OSError) as e:
                    raise UpstreamFailure(
                        Failure.CONNECT,
                        f"its CA bundle is not usable ({type(e).__name__})",
                        tls=True,
                    ) from e
        headers = forward_headers(request.headers, strip=strip, extra=call.headers)
        if key is not None:
            headers[prov.dialect.auth_header] = prov.dialect.auth_value(key)
        return await send(
            self.providers,
            call,
            headers=headers,
            ssl_context=ssl_context,
            server_hostname=prov.server_hostname,
            timeout=prov.timeout,
        )

    def _attempt_failed(
        self, plan: AttemptPlan, prov: ProviderRuntime, f: UpstreamFailure, rec: RequestRecord
    ) -> None:
        kind = "tls" if f.tls else f.failure.value
        self.metrics.upstream_errors.labels(prov.name, kind).inc()
        if plan.counts_against_breaker(f.failure):
            prov.breaker.failure()
        else:
            prov.breaker.release()
        log.warning(
            "upstream attempt failed",
            extra={"fields": {**_attempt_fields(rec, prov, kind, None), "detail": f.detail}},
        )

    # ── relaying a response ──────────────────────────────────────────────────────────────────

    async def _relay(
        self,
        request: web.Request,
        rt: Runtime,
        rec: RequestRecord,
        ex: Exchange,
        inbound: Inbound,
        prov: ProviderRuntime,
        resp: ProviderResponse,
        start: float,
    ) -> web.StreamResponse:
        status = resp.status
        if status == 200 and resp.content_type == "text/event-stream":
            prov.breaker.success()
            return await self._relay_stream(request, rt, rec, ex, inbound, resp, start)
        try:
            body = await resp.read()
        except UPSTREAM_ERRORS as e:
            resp.close()
            raise _AttemptFailed(classify(e)) from e
        finally:
            resp.release()
        prov.breaker.success()
        rec.status = status
        headers = response_headers(resp.headers)
        headers[REQUEST_ID_HEADER] = rec.request_id
        if 200 <= status < 300 and ex.api is not Api.MODEL:
            info = inbound.parse_response(ex, body)
            self._record_response(rec, info)
            try:
                if info.unparsed and type(rt.guardrails) is not NoGuardrails:
                    # Never relay unscanned text silently: failureMode decides.
                    rec.unscanned = {**rec.unscanned, "unparseable_response": 1}
                    self.metrics.unscanned_parts.labels("unparseable_response").inc()
                    raise UnreadableResponse(
                        "the provider's response is not a readable JSON object"
                    )
                verdict = (
                    ALLOW
                    if type(rt.guardrails) is NoGuardrails
                    else await rt.guardrails.check_output(ex, info)
                )
            except Exception as e:
                verdict = self._guardrail_failed(rt, rec, "output", e)
            if verdict.counts:
                rec.count_findings("output", verdict.counts)
            self._guard_verdict(rec, rt, verdict, "the response was blocked")
            if info.modified and info.doc is not None and rt.enforce:
                body = dumps(info.doc)
        elif status >= 400:
            rec.outcome = "upstream_client_error"
        await self._emit(rec, rt, started=False)
        return web.Response(status=status, body=body, headers=headers)

    async def _relay_kept(self, kept: _Relayed, rec: RequestRecord, rt: Runtime) -> web.Response:
        """The last provider error, relayed as the provider wrote it (same wire format)."""
        rec.status = kept.status
        rec.outcome = "upstream_rate_limited" if kept.status == 429 else "upstream_error"
        kept.headers[REQUEST_ID_HEADER] = rec.request_id
        await self._emit(rec, rt, started=False)
        return web.Response(status=kept.status, body=kept.body, headers=kept.headers)

    async def _relay_stream(
        self,
        request: web.Request,
        rt: Runtime,
        rec: RequestRecord,
        ex: Exchange,
        inbound: Inbound,
        resp: ProviderResponse,
        start: float,
    ) -> web.StreamResponse:
        """Relay SSE chunk by chunk. Until the first byte reaches the client, a broken upstream
        raises :class:`_AttemptFailed` (the next target may be tried); after it, never."""
        guard = rt.guardrails.output_stream(ex)
        rec.status = resp.status
        begin = getattr(self.audit, "begin", None)  # in-flight journal (audit/spool.py)
        if begin is not None:
            begin(rec)
        try:
            return await self._pump(request, rt, rec, ex, inbound, resp, start, guard)
        except BaseException:
            resp.close()  # cancelled (shutdown past the drain bound) or a bug: free the socket
            raise

    async def _pump(
        self,
        request: web.Request,
        rt: Runtime,
        rec: RequestRecord,
        ex: Exchange,
        inbound: Inbound,
        resp: ProviderResponse,
        start: float,
        guard: StreamGuard | None,
    ) -> web.StreamResponse:
        """The relay loop of :meth:`_relay_stream`."""
        parser = inbound.stream_parser(ex)
        splitter = SSESplitter()
        shadow = not rt.enforce  # audit mode: the guard sees everything, changes nothing
        loop = asyncio.get_running_loop()
        content = resp.content
        out: web.StreamResponse | None = None
        broken: UpstreamFailure | None = None
        blocked: ProxyError | None = None
        final: list[bytes] = []
        try:
            while True:
                try:
                    chunk = await content.readany()
                except UPSTREAM_ERRORS as e:
                    broken = classify(e)
                    break
                if not chunk:
                    break
                try:
                    blocks = splitter.feed(chunk)
                except SSEError as e:
                    broken = UpstreamFailure(Failure.CONNECT, str(e))
                    break
                if not blocks:
                    continue
                pieces: list[bytes] = []
                for block in blocks:
                    event = parser.feed(block)
                    if event.action is EventAction.DROP:
                        continue
                    if event.deltas and rec.ttft_seconds is None:
                        # The first token from the provider (gen_ai.server.*), also when the
                        # output guardrails hold it back from the client for a while.
                        rec.ttft_seconds = loop.time() - start
                    if guard is not None:
                        try:
                            verdict = guard.on_event(event)
                        except Exception as e:
                            blocked = self._stream_guard_failed(rec, rt, e, shadow)
                            if blocked is not None:
                                break
                            guard = None  # audit mode: it held nothing; relay on without it
                            (final if parser.done else pieces).append(event.raw)
                            continue
                        if verdict.counts:
                            rec.count_findings("output", verdict.counts)
                        if shadow:
                            if verdict.blocked:
                                self._shadow_block(rec, verdict.rule, verdict.reason)
                            (final if parser.done else pieces).append(event.raw)
                            continue
                        pieces.extend(e.render() for e in verdict.released)
                        if verdict.verdict is Verdict.HOLD:
                            continue
                        if verdict.blocked:
                            blocked = self._stream_block(rec, rt, verdict.rule, verdict.reason)
                            break
                    # The terminal event ([DONE], message_stop, response.completed) waits for
                    # the audit event: a client never sees a complete stream whose event
                    # was not written (fail-closed ends it with an error event instead).
                    (final if parser.done else pieces).append(event.render())
                if pieces:
                    if out is None:
                        out = await self._start_stream(request, resp, rec)
                    await out.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))
                if blocked is not None:
                    break
        except ConnectionError:
            # The client went away mid-stream; stop reading the provider too.
            resp.close()
            rec.status, rec.outcome = CLIENT_CLOSED, "client_closed"
            self._record_response(rec, parser.finish())
            await self._emit(rec, rt, started=True)
            return out if out is not None else web.Response(status=CLIENT_CLOSED)

        if broken is None and blocked is None and not parser.done:
            broken = UpstreamFailure(Failure.CONNECT, "the stream ended before its last event")
        if broken is not None or blocked is not None:
            resp.close()
        else:
            resp.release()
        if broken is not None and out is None:
            raise _AttemptFailed(broken)
        if guard is not None and broken is None and blocked is None:
            finish = getattr(guard, "finish", None)  # optional async end (hooks.StreamGuard)
            try:
                verdict = await finish() if finish is not None else guard.on_end()
            except Exception as e:
                verdict = ALLOW  # nothing more to release or count
                blocked = self._stream_guard_failed(rec, rt, e, shadow)
            if verdict.counts:
                rec.count_findings("output", verdict.counts)
            tail = [] if shadow else [e.render() for e in verdict.released]
            if verdict.blocked:
                if shadow:
                    self._shadow_block(rec, verdict.rule, verdict.reason)
                else:
                    blocked = self._stream_block(rec, rt, verdict.rule, verdict.reason)
            if tail:
                if out is None:
                    out = await self._start_stream(request, resp, rec)
                await _write(out, b"".join(tail))
        self._record_response(rec, parser.finish())
        if out is None:
            out = await self._start_stream(request, resp, rec)
        error = blocked
        if broken is not None:
            rec.outcome = "upstream_stream_broken"
            error = ProxyError(
                ErrorKind.BAD_GATEWAY,
                f"aiguard: provider {rec.provider!r} broke the stream: {broken.detail}",
                code="upstream_error",
            )
            log.warning(
                "upstream stream broken",
                extra={
                    "fields": {
                        "request_id": rec.request_id,
                        "provider": rec.provider,
                        "detail": broken.detail,
                    }
                },
            )
        audit_error = await self._emit(rec, rt, started=True)
        if error is None:
            error = audit_error  # fail-closed audit: the stream ends with an error event
        if error is not None:
            await _write(out, inbound.stream_error_event(error, ex))
        elif final:
            await _write(out, b"".join(final))
        try:
            await out.write_eof()
        except ConnectionError:
            rec.status, rec.outcome = CLIENT_CLOSED, "client_closed"
        return out

    async def _start_stream(
        self, request: web.Request, resp: ProviderResponse, rec: RequestRecord
    ) -> web.StreamResponse:
        headers = response_headers(resp.headers)
        headers[REQUEST_ID_HEADER] = rec.request_id
        out = RelayResponse(status=resp.status, headers=headers)
        await out.prepare(request)
        return out

    def _stream_block(
        self, rec: RequestRecord, rt: Runtime, rule: str | None, reason: str
    ) -> ProxyError:
        rec.decisions.append(Decision("guardrail", False, rule, reason, enforced=True))
        rec.outcome = "guardrail_blocked"
        return ProxyError(
            ErrorKind.INVALID_REQUEST,
            f"aiguard policy {rt.name}: the response was stopped by {rule or 'a guardrail'}"
            + (f": {reason}" if reason else ""),
            code="guardrail_blocked",
            rule=rule,
        )

    def _stream_guard_failed(
        self, rec: RequestRecord, rt: Runtime, error: Exception, shadow: bool
    ) -> ProxyError | None:
        """The stream guard itself raised (a guardrail's own error is its failureMode's, inside
        the guard): what it holds back can no longer be trusted, so the stream ends here with an
        error event, in either failureMode, and the audit event says so. In audit mode the guard
        holds nothing back: the failure is recorded and the stream goes on (None)."""
        log.exception(
            "output stream guard failed",
            extra={"fields": {"request_id": rec.request_id, "stream_ends": not shadow}},
        )
        rule = "guardrails.output"
        reason = f"stream guard error ({type(error).__name__})"
        rec.decisions.append(Decision("guardrail", False, rule, reason, enforced=not shadow))
        if shadow:
            return None
        rec.outcome = "guardrail_error"
        return ProxyError(
            ErrorKind.UNAVAILABLE,
            f"aiguard policy {rt.name}: the output guardrails failed on this stream",
            code="guardrail_error",
            rule=rule,
        )

    @staticmethod
    def _shadow_block(rec: RequestRecord, rule: str | None, reason: str) -> None:
        rec.decisions.append(Decision("guardrail", False, rule, reason, enforced=False))

    @staticmethod
    def _record_response(rec: RequestRecord, info: ResponseInfo) -> None:
        rec.response = info
        rec.model_served = info.served_model
        rec.system_fingerprint = info.system_fingerprint
        rec.response_id = info.response_id
        rec.input_tokens = info.input_tokens
        rec.output_tokens = info.output_tokens

    # ── endings ──────────────────────────────────────────────────────────────────────────────

    async def _error(
        self, inbound: Inbound, err: ProxyError, rec: RequestRecord, rt: Runtime, start: float
    ) -> web.Response:
        rec.status = err.status
        rec.outcome = err.code
        rec.error = err.message
        try:
            await self._emit(rec, rt, started=False)
        except ProxyError as audit_err:
            err = audit_err
            rec.status, rec.outcome, rec.error = err.status, err.code, err.message
        headers = err.headers()
        headers[REQUEST_ID_HEADER] = rec.request_id
        return web.Response(
            status=err.status, body=inbound.error_body(err), content_type=_JSON, headers=headers
        )

    async def _emit(self, rec: RequestRecord, rt: Runtime, *, started: bool) -> ProxyError | None:
        """Hand the record to the audit sink before the response completes. When the sink
        cannot take it and the policy fails closed, a response not yet started becomes 503
        (raised); for a stream already started the error is returned, and the caller ends
        the stream with it as an error event."""
        rec.latency_seconds = asyncio.get_running_loop().time() - rec.started_mono
        rec.model_drift = self.drift.observe(rec)
        try:
            rec.emitted = True
            await self.audit.emit(rec)
        except AuditUnavailable as e:
            closed = rt.cfg.spec.audit.on_spool_failure is FailureMode.CLOSED
            log.error(
                "audit event not written",
                extra={
                    "fields": {
                        "request_id": rec.request_id,
                        "error": str(e),
                        "on_spool_failure": "closed" if closed else "open",
                    }
                },
            )
            if closed:
                err = ProxyError(
                    ErrorKind.UNAVAILABLE,
                    f"aiguard policy {rt.name}: the audit event could not be written and "
                    "spec.audit.onSpoolFailure is closed",
                    code="audit_unavailable",
                    retry_after=1.0,
                )
                if not started:
                    raise err from e
                rec.outcome = err.code
                return err
        return None

    def _observe(self, rec: RequestRecord, rt: Runtime, latency: float) -> None:
        m = self.metrics
        rec.latency_seconds = latency
        code = rec.outcome
        if code == "ok":
            decision = "shadow_deny" if any(not d.allowed for d in rec.decisions) else "allow"
        elif code in _POLICY_CODES and rec.denied:
            decision = "deny"
        else:
            decision = "error"
        m.child(m.requests, decision, code).inc()
        m.overhead.observe(max(0.0, latency - rec.upstream_seconds))
        if rec.findings:
            m.count_findings(rec.findings)
        if rec.provider is None or rec.operation is None:
            return
        prov = rt.providers.get(rec.provider)
        provider_name = prov.otel_name if prov is not None else ""
        req_model = m.model_label(rec.model_requested)
        resp_model = m.model_label(rec.model_served)
        op = rec.operation
        error_type = "" if 200 <= rec.status < 400 else str(rec.status)
        m.child(
            m.operation_duration, op, provider_name, rec.provider, req_model, resp_model, error_type
        ).observe(latency)
        if rec.input_tokens is not None:
            m.child(
                m.token_usage, op, provider_name, rec.provider, req_model, resp_model, "input"
            ).observe(rec.input_tokens)
        if rec.output_tokens is not None and op != Operation.EMBEDDINGS.value:
            m.child(
                m.token_usage, op, provider_name, rec.provider, req_model, resp_model, "output"
            ).observe(rec.output_tokens)
        if rec.ttft_seconds is not None:
            m.child(m.time_to_first_token, op, provider_name, rec.provider, req_model).observe(
                rec.ttft_seconds
            )


# ── helpers ──────────────────────────────────────────────────────────────────────────────────


async def _read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    if len(raw) > limit:
        raise _too_large(limit)
    return raw


def _too_large(limit: int) -> ProxyError:
    return ProxyError(
        ErrorKind.TOO_LARGE,
        f"aiguard: the request body exceeds {limit} bytes "
        "(guardrails.input.validation.maxBodyBytes)",
        code="body_too_large",
        rule="guardrails.input.validation.maxBodyBytes",
    )


def _holding(
    rt: Runtime, route: CompiledRoute, stored: StoredResponse, ex: Exchange
) -> CompiledRoute:
    """``route`` narrowed to the provider that holds a stored response (no failover: no other
    provider has it); 404 when the route no longer lists that provider."""
    targets = tuple(t for t in route.targets if t.provider == stored.provider)
    if not targets:
        raise ProxyError(
            ErrorKind.NOT_FOUND,
            f"aiguard policy {rt.name}: route {route.name!r} no longer sends model "
            f"{_short(ex.model)!r} to provider {stored.provider!r}, which holds response "
            f"{_short(ex.resource_id or '')!r}",
            code="model_not_routed",
            rule=f"routes[{route.name}]",
        )
    return dataclasses.replace(route, targets=targets[:1])


def _gone(request: web.Request) -> Callable[[], bool]:
    """True once the client's connection is closed (a held request then goes no further)."""
    return lambda: request.transport is None or request.transport.is_closing()


async def _write(out: web.StreamResponse, data: bytes) -> None:
    with contextlib.suppress(ConnectionError):
        await out.write(data)


def _short(value: str, limit: int = 128) -> str:
    v = "".join(c if c.isprintable() else "?" for c in value[: limit + 1])
    return v if len(v) <= limit else v[: limit - 1] + "…"


def _stopped(plan: AttemptPlan) -> str:
    if plan.stopped == "budget":
        return " (retry budget spent: spec.resilience.retryBudgetPercent)"
    if plan.stopped == "failover_off":
        return " (not retried: spec.resilience.failoverOn)"
    return ""


def _attempt_fields(
    rec: RequestRecord, prov: ProviderRuntime, kind: str, status: int | None
) -> dict[str, object]:
    return {
        "request_id": rec.request_id,
        "route": rec.route,
        "provider": prov.name,
        "failure": kind,
        "status": status,
    }
