"""Human review: hold a request until a person approves or denies it (or nobody does in time).

An input guardrail decides REVIEW (the ``review`` guardrail's models/tools/keywords, or a
detector whose action is ``review``: ``deny``, ``promptInjection``, ``moderation``); the
pipeline then calls :func:`hold`::

    sidecar ──POST /v1/approvals {request_id, model, user, summary, timeout_seconds, policy,
    │                             namespace, pod}           (Bearer: projected SA token, as the
    │                                                         audit shipper presents it)
    │         collector: TokenReview → creates AIIncident review-<request id> in the pod's
    │         namespace, state pending-approval, spec.approval {requestId, model, user,
    │         summary, expiresAt}                        ◄── kubectl aiguard approve|deny NAME
    └─GET /v1/approvals/{namespace}/{name}?wait=25  (long-poll, repeated until timeout_seconds)
              → {"state": "approved" | "denied" | "pending-approval", "decidedBy", "note"}

    approved            the request goes on through the pipeline (route, upstream) unchanged
    denied / expired    403 in the client's format, naming the rule and who denied
                        (the collector denies as ``aiguard (timeout)`` when expiresAt passes)
    collector down      spec.failureMode: closed → 503; open → the request goes on, unreviewed
    no collector URL    refused (403): review needs the collector
    mode: audit         never held: the decision is recorded as what would have happened
    count_tokens        never held (Anthropic's token count: no model acts on the request)

The client's connection stays open meanwhile; nothing blocks the event loop (the wait is an
HTTP long-poll, and the client is checked every second so a request whose caller went away
is not sent upstream later). The audit event records a ``review`` decision naming the
approver; the approval's summary is metadata only (guardrail findings by type, model, tool
names, sizes), never prompt content.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from aiguard_api import audit
from aiguard_api.policy_types import FailureMode, model_matches
from aiguard_sidecar.audit.shipper import DeliveryError, TokenFile
from aiguard_sidecar.audit.sink import AuditSettings
from aiguard_sidecar.errors import ErrorKind, ProxyError
from aiguard_sidecar.exchange import Api, Exchange
from aiguard_sidecar.hooks import GuardDecision, Verdict
from aiguard_sidecar.identity import Workload
from aiguard_sidecar.records import Decision, RequestRecord
from aiguard_sidecar.runtime import Runtime

log = logging.getLogger("aiguard.sidecar.review")

STAGE: Final = "review"
"""``stage`` of the review decision in the audit event."""
WAIT_SECONDS: Final = 25.0
"""Longest single long-poll; the wait repeats until the approval's deadline."""
GRACE_SECONDS: Final = 5.0
"""The sidecar waits this much past ``timeoutSeconds`` so the collector's expiry (its clock,
its record in the AIIncident) decides, not a race between two clocks."""
CLIENT_CHECK_SECONDS: Final = 1.0
"""How often a held request looks whether its client is still connected."""
RETRY_SECONDS: Final = 1.0
"""Pause after a failed long-poll before the next one (within the deadline)."""
PENDING: Final = "pending-approval"
APPROVED: Final = "approved"
DENIED: Final = "denied"
_ID_SAFE: Final = re.compile(r"[^A-Za-z0-9._-]")


class ReviewUnavailable(Exception):
    """The collector could not be asked (or refused the sidecar); ``failureMode`` decides."""


class ClientGone(Exception):
    """The client closed its connection while its request was held."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """An approval request the collector accepted: the AIIncident that tracks it."""

    namespace: str
    name: str
    expires_at: str


@dataclass(frozen=True, slots=True)
class Outcome:
    state: str  # approved | denied
    decided_by: str
    note: str = ""


# ── what the request carries ─────────────────────────────────────────────────────────────────


def _names(items: Any, *keys: tuple[str, ...]) -> Iterable[str]:
    """``item[k1][k2]...`` for each item and each key path, when it is a string."""
    if not isinstance(items, list):
        return
    for item in items:
        for path in keys:
            node: Any = item
            for k in path:
                node = node.get(k) if isinstance(node, dict) else None
            if isinstance(node, str) and node:
                yield node


def tool_names(exchange: Exchange) -> frozenset[str]:
    """Tools the request declares (offers the model) or calls (earlier turns), by name, in
    every format the sidecar speaks: OpenAI chat (``tools[].function.name``, legacy
    ``functions[].name``, ``messages[].tool_calls[].function.name``,
    ``messages[].function_call.name``), the Responses API (``tools[].name`` or a built-in
    tool's ``type``, ``input[]`` items of type ``function_call``) and Anthropic
    (``tools[].name``, ``tool_use`` content blocks)."""
    body = exchange.body
    if not isinstance(body, dict):
        return frozenset()
    out: set[str] = set()
    tools = body.get("tools")
    if isinstance(tools, list):
        for t in tools:
            if not isinstance(t, dict):
                continue
            fn = t.get("function")
            name = fn.get("name") if isinstance(fn, dict) else t.get("name")
            if not isinstance(name, str):
                name = t.get("type")  # Responses built-ins: web_search, code_interpreter, ...
            if isinstance(name, str) and name:
                out.add(name)
    out.update(_names(body.get("functions"), ("name",)))
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            out.update(_names(m.get("tool_calls"), ("function", "name")))
            out.update(_names([m], ("function_call", "name")))
            content = m.get("content")
            if isinstance(content, list):
                out.update(
                    _names([b for b in content if isinstance(b, dict) and b.get("type") in
                            ("tool_use", "server_tool_use")], ("name",))
                )  # fmt: skip
    items = body.get("input")
    if isinstance(items, list):
        calls = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call"]
        out.update(_names(calls, ("name",)))
    return frozenset(out)


def summary(rt: Runtime, ex: Exchange, verdict: GuardDecision) -> str:
    """What an approver is shown: why the request was held and what it is, without content."""
    parts = [verdict.reason or "held for review"]
    found = [f"{g}/{t} x{n}" for g, t, a, n in verdict.counts if a == "review"]
    if found:
        parts.append("findings: " + ", ".join(found))
    cfg = rt.cfg.spec.guardrails.input.review
    if cfg.tools:
        matched = sorted(t for t in tool_names(ex) if any(model_matches(p, t) for p in cfg.tools))
        if matched:
            parts.append("tools: " + ", ".join(t[:64] for t in matched[:16]))
    parts.append(f"{ex.wire.value} {ex.api.value}")
    parts.append(f"{len(ex.segments)} text segments, {ex.input_chars} characters")
    return "; ".join(parts)[:2000]


# ── the collector client ─────────────────────────────────────────────────────────────────────


class Reviewer:
    """Talks to the collector's approvals API with the pod's projected ServiceAccount token
    (the same token file and CA as the audit shipper)."""

    def __init__(
        self,
        *,
        url: str,
        workload: Workload,
        token_file: Path | None,
        ca_file: Path | None = None,
        timeout: float = 10.0,
        wait_seconds: float = WAIT_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.url = url.rstrip("/") + audit.APPROVALS_PATH
        self.workload = workload
        self.token = TokenFile(token_file)
        self.ca_file = ca_file
        self.timeout = timeout
        self.wait_seconds = wait_seconds
        self.retry_seconds = retry_seconds
        self._session: aiohttp.ClientSession | None = None
        self._opening: asyncio.Lock | None = None

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                if self._session is None:
                    ctx: ssl.SSLContext | bool = True
                    if self.ca_file is not None:
                        ctx = await asyncio.to_thread(
                            ssl.create_default_context, cafile=str(self.ca_file)
                        )
                        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                    self._session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(ssl=ctx, limit=256),
                        trust_env=False,
                        cookie_jar=aiohttp.DummyCookieJar(),
                    )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _call(
        self, method: str, url: str, *, body: Any = None, seconds: float | None = None
    ) -> tuple[int, Any]:
        session = await self._open()
        total = aiohttp.ClientTimeout(total=seconds or self.timeout)
        for attempt in (1, 2):
            try:
                token = await self.token.get(force=attempt == 2)
            except DeliveryError as e:
                raise ReviewUnavailable(str(e)) from e
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                async with session.request(
                    method, url, json=body, headers=headers, timeout=total
                ) as resp:
                    status, text = resp.status, await resp.text()
            except TimeoutError as e:
                raise ReviewUnavailable(f"no answer from {self.url}") from e
            except aiohttp.ClientError as e:
                raise ReviewUnavailable(f"{self.url}: {e}") from e
            if status == 401 and attempt == 1:
                continue  # the kubelet may have rotated the token: read it again, once
            break
        try:
            doc = json.loads(text) if text else {}
        except ValueError:
            doc = {"error": text[:300]}
        if status >= 400:
            message = doc.get("error") if isinstance(doc, dict) else None
            raise ReviewUnavailable(f"the collector answered {status}: {message or text[:300]}")
        return status, doc

    async def request(
        self,
        *,
        request_id: str,
        model: str | None,
        user: str | None,
        summary: str,
        timeout_seconds: int,
        policy: str,
    ) -> Ticket:
        """Raise the approval request (idempotent per request id). Raises ReviewUnavailable."""
        body = {
            "request_id": _ID_SAFE.sub("-", request_id)[:128],
            "model": model[:253] if model else None,
            "user": user[:253] if user else None,
            "summary": summary,
            "timeout_seconds": timeout_seconds,
            "policy": policy,
            "namespace": self.workload.namespace,
            "pod": self.workload.pod,
        }
        _, doc = await self._call("POST", self.url, body=body)
        try:
            return Ticket(str(doc["namespace"]), str(doc["name"]), str(doc.get("expiresAt", "")))
        except (KeyError, TypeError) as e:
            raise ReviewUnavailable(f"unreadable answer from the collector: {doc!r:.300}") from e

    async def poll(self, ticket: Ticket, wait: float) -> dict[str, Any]:
        """One long-poll: the approval's state after at most ``wait`` seconds."""
        url = f"{self.url}/{ticket.namespace}/{ticket.name}?wait={max(0, int(wait))}"
        _, doc = await self._call("GET", url, seconds=wait + self.timeout)
        if not isinstance(doc, dict) or not isinstance(doc.get("state"), str):
            raise ReviewUnavailable(f"unreadable answer from the collector: {doc!r:.300}")
        return doc

    async def wait(
        self, ticket: Ticket, *, deadline: float, gone: Callable[[], bool] | None = None
    ) -> Outcome:
        """Long-poll until approved or denied. ``deadline`` is ``time.monotonic()`` time.
        Raises ReviewUnavailable when no decision could be read by the deadline (the last
        error), ClientGone when ``gone()`` turns true."""
        last: ReviewUnavailable | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if last is not None:
                    raise last
                raise ReviewUnavailable(
                    f"the collector did not decide AIIncident {ticket.namespace}/{ticket.name} "
                    "by the deadline"
                )
            task = asyncio.ensure_future(self.poll(ticket, min(self.wait_seconds, remaining)))
            try:
                while not task.done():
                    await asyncio.wait({task}, timeout=CLIENT_CHECK_SECONDS)
                    if gone is not None and gone():
                        raise ClientGone()
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            try:
                doc = task.result()
            except ReviewUnavailable as e:
                last = e
                await asyncio.sleep(min(self.retry_seconds, max(0.0, remaining)))
                continue
            last = None
            state = doc["state"]
            if state in (APPROVED, DENIED):
                return Outcome(state, str(doc.get("decidedBy") or "unknown"), _note(doc))


def _note(doc: dict[str, Any]) -> str:
    note = doc.get("note")
    return (
        "".join(c if c.isprintable() else " " for c in note[:200]) if isinstance(note, str) else ""
    )


# ── the pipeline's step ──────────────────────────────────────────────────────────────────────


def _allow(verdict: GuardDecision) -> GuardDecision:
    return GuardDecision(
        Verdict.ALLOW, verdict.rule, verdict.reason, verdict.findings, verdict.counts
    )


async def hold(
    reviewer: Reviewer | None,
    rt: Runtime,
    rec: RequestRecord,
    ex: Exchange,
    verdict: GuardDecision,
    *,
    gone: Callable[[], bool] | None = None,
) -> GuardDecision:
    """Hold a request the input guardrails sent to review. Returns the decision to go on with
    (allowed, findings kept for the audit event) or raises the :class:`ProxyError` the client
    gets. Records one ``review`` decision either way."""
    rule = f"spec.{verdict.rule or 'guardrails.input.review'}"
    if ex.api is Api.COUNT_TOKENS:  # the provider counts tokens; no model acts on it
        rec.decisions.append(Decision(STAGE, True, rule, "a token count is not held for review"))
        return _allow(verdict)
    if not rt.enforce:
        rec.decisions.append(
            Decision(STAGE, False, rule, "would be held for human review", enforced=False)
        )
        return _allow(verdict)
    timeout = rt.cfg.spec.guardrails.input.review.timeout_seconds
    if reviewer is None:
        rec.decisions.append(Decision(STAGE, False, rule, "review needs the aiguard collector"))
        raise ProxyError(
            ErrorKind.PERMISSION,
            f"aiguard policy {rt.name}: this request needs human review ({rule}), and review "
            "needs the aiguard collector: this sidecar has no collector URL "
            "(--collector-url / AIGUARD_COLLECTOR_URL)",
            code="review_unavailable",
            rule=rule,
        )
    principal = rec.principal
    try:
        ticket = await reviewer.request(
            request_id=rec.request_id,
            model=ex.model or None,
            user=principal.user if principal is not None else None,
            summary=summary(rt, ex, verdict),
            timeout_seconds=timeout,
            policy=rt.name,
        )
    except ReviewUnavailable as e:
        return _unreachable(rt, rec, verdict, rule, e)
    log.warning(
        "request held for human review",
        extra={
            "fields": {
                "request_id": rec.request_id,
                "incident": f"{ticket.namespace}/{ticket.name}",
                "expires_at": ticket.expires_at,
                "rule": rule,
                "approve": f"kubectl aiguard approve {ticket.name} -n {ticket.namespace}",
            }
        },
    )
    try:
        outcome = await reviewer.wait(
            ticket, deadline=time.monotonic() + timeout + GRACE_SECONDS, gone=gone
        )
    except ReviewUnavailable as e:
        return _unreachable(rt, rec, verdict, rule, e)
    except ClientGone:
        rec.decisions.append(
            Decision(STAGE, False, rule, "the client went away while the request was held")
        )
        raise ProxyError(
            ErrorKind.PERMISSION,
            f"aiguard policy {rt.name}: the client closed the connection while the request "
            f"was held for human review ({rule})",
            code="client_closed",
            rule=rule,
        ) from None
    incident = f"AIIncident {ticket.namespace}/{ticket.name}"
    note = f" ({outcome.note})" if outcome.note else ""
    if outcome.state == APPROVED:
        rec.decisions.append(
            Decision(STAGE, True, rule, f"approved by {outcome.decided_by}{note}; {incident}")
        )
        return _allow(verdict)
    rec.decisions.append(
        Decision(STAGE, False, rule, f"denied by {outcome.decided_by}{note}; {incident}")
    )
    raise ProxyError(
        ErrorKind.PERMISSION,
        f"aiguard policy {rt.name}: the request was held for human review ({rule}) and denied "
        f"by {outcome.decided_by}{note}; see {incident}",
        code="review_denied",
        rule=rule,
    )


def _unreachable(
    rt: Runtime, rec: RequestRecord, verdict: GuardDecision, rule: str, e: ReviewUnavailable
) -> GuardDecision:
    log.error(
        "human review unavailable",
        extra={"fields": {"request_id": rec.request_id, "error": str(e)}},
    )
    if rt.cfg.spec.failure_mode is FailureMode.OPEN:
        rec.decisions.append(
            Decision(STAGE, True, rule, "collector unreachable; failureMode open: not reviewed")
        )
        return _allow(verdict)
    rec.decisions.append(Decision(STAGE, False, rule, "collector unreachable; failureMode closed"))
    raise ProxyError(
        ErrorKind.UNAVAILABLE,
        f"aiguard policy {rt.name}: this request needs human review ({rule}) but the aiguard "
        f"collector cannot be asked ({e}); spec.failureMode is closed",
        code="review_unavailable",
        rule=rule,
    ) from e


def from_settings(settings: AuditSettings, workload: Workload) -> Reviewer | None:
    """The reviewer of a sidecar process: the audit shipper's collector, token and CA; None
    without a collector URL (review requests are then refused)."""
    if not settings.collector_url:
        return None
    return Reviewer(
        url=settings.collector_url,
        workload=workload,
        token_file=settings.token_file,
        ca_file=settings.ca_file,
    )
