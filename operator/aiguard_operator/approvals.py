"""Human review in the collector: approval requests become AIIncidents a person decides on.

::

    sidecar ──POST /v1/approvals──────────────► create AIIncident review-<request id> in the
      (Bearer: projected SA token,               pod's namespace: severity medium, guardrail
       TokenReview as for /v1/events)            "review", state pending-approval,
                                                 spec.approval {requestId, model, user,
                                                 summary, expiresAt}; history: who asked
    sidecar ──GET /v1/approvals/{ns}/{name}?wait=25──► re-reads the object every
                                                 POLL_SECONDS until it is decided or ``wait``
                                                 passes; past expiresAt it denies it itself
    person  ──kubectl aiguard approve|deny NAME [-n NS] [--note T]──► incidents.transitions:
                                                 spec.state + spec.approval.decidedBy/At,
                                                 status.history {time, actor, from, to, note}
    sweeper (every SWEEP_SECONDS) ──► pending approvals past expiresAt → denied, actor
                                                 ``aiguard (timeout)`` (no sidecar waiting:
                                                 it crashed, or its client went away)

Authorisation: a sidecar may request approvals only in its own namespace and (pod-bound
token) for its own pod, and read back only the approvals its ServiceAccount requested.
Deciding is Kubernetes RBAC: whoever may ``patch`` ``aiincidents`` (and
``aiincidents/status``, for the history) in the namespace may approve or deny there.

Wire format (JSON)::

    POST {"request_id", "model", "user", "summary", "timeout_seconds", "policy",
          "namespace", "pod"}
      → 201 (200 for a repeat of the same request) {"namespace", "name", "state", "expiresAt"}
      400 malformed, 401 token, 403 another workload's namespace or pod, 409 the name is
      taken by another request, 503 the API server is unavailable or refused the collector
    GET  → 200 {"namespace", "name", "state": "pending-approval" | "approved" | "denied",
                "requestId", "expiresAt", "decidedBy", "decidedAt", "note"}; 404 unknown
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TextIO

from aiohttp import web

from aiguard_api import audit
from aiguard_api.constants import API_GROUP, API_VERSION, PLURAL_INCIDENT
from aiguard_api.policy import IncidentState, Severity
from aiguard_operator import kube
from aiguard_operator.collector import auth
from aiguard_operator.incidents import transitions

log = logging.getLogger("aiguard.collector.approvals")

GUARDRAIL: Final = "review"
NAME_PREFIX: Final = "review-"
LABEL: Final = "aiguard.dev/approval"
"""Label on every approval AIIncident (``"true"``): what the sweeper lists."""
REQUESTER_ANNOTATION: Final = "aiguard.dev/requested-by"
"""The authenticated ServiceAccount that asked (only it may long-poll the approval)."""
TIMEOUT_ACTOR: Final = "aiguard (timeout)"
POLL_SECONDS: Final = 1.0
"""How often a long-poll re-reads the AIIncident (a decision reaches the sidecar this fast)."""
MAX_WAIT: Final = 60
"""Longest long-poll the collector serves (``?wait=``)."""
SETTLE_SECONDS: Final = 3.0
"""How long a long-poll waits for a decision's history entry after seeing the new state."""
SWEEP_SECONDS: Final = 15.0
"""How often pending approvals nobody waits on are checked for expiry."""
MAX_REQUEST_BYTES: Final = 16384
MIN_TIMEOUT: Final = 5
MAX_TIMEOUT: Final = 3600
_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
PENDING: Final = IncidentState.PENDING_APPROVAL


class Invalid(Exception):
    """A malformed approval request (400)."""


# --------------------------------------------------------------------------- pure parts


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def incident_name(request_id: str) -> str:
    """``review-<request id>``, as a DNS subdomain name."""
    safe = re.sub(r"[^a-z0-9-]+", "-", request_id.lower()).strip("-") or "request"
    return (NAME_PREFIX + safe)[:253].rstrip("-")


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    request_id: str
    namespace: str
    pod: str
    policy: str
    timeout_seconds: int
    model: str | None = None
    user: str | None = None
    summary: str = ""


def _text(doc: Mapping[str, Any], key: str, limit: int, *, required: bool) -> str | None:
    value = doc.get(key)
    if value is None or value == "":
        if required:
            raise Invalid(f"{key} is required")
        return None
    if not isinstance(value, str):
        raise Invalid(f"{key} must be a string")
    if len(value) > limit:
        raise Invalid(f"{key} is longer than {limit} characters")
    return value


def parse_request(raw: bytes) -> ApprovalRequest:
    """The body of ``POST /v1/approvals``; :class:`Invalid` names the first problem."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise Invalid(f"the body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise Invalid("expected a JSON object")
    request_id = _text(doc, "request_id", 128, required=True) or ""
    if not _REQUEST_ID.match(request_id):
        raise Invalid("request_id may contain only letters, digits, '.', '_' and '-'")
    timeout = doc.get("timeout_seconds")
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise Invalid("timeout_seconds must be an integer")
    if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
        raise Invalid(f"timeout_seconds must be {MIN_TIMEOUT} to {MAX_TIMEOUT}")
    return ApprovalRequest(
        request_id=request_id,
        namespace=_text(doc, "namespace", 63, required=True) or "",
        pod=_text(doc, "pod", 253, required=True) or "",
        policy=_text(doc, "policy", 253, required=True) or "",
        timeout_seconds=timeout,
        model=_text(doc, "model", 253, required=False),
        user=_text(doc, "user", 253, required=False),
        summary=_text(doc, "summary", 2048, required=False) or "",
    )


def caller_problem(who: auth.Identity, namespace: str, pod: str | None) -> str | None:
    """Why ``who`` may not request (or read) approvals of ``namespace``/``pod`` (None: may)."""
    sa = who.service_account
    if sa is None:
        return f"{who.username} is not a ServiceAccount; only sidecars request approvals"
    if sa[0] != namespace:
        return (
            f"the token is for ServiceAccount {sa[0]}/{sa[1]}; it may not request approvals "
            f"in namespace {namespace}"
        )
    if pod is not None and who.pod is not None and who.pod != pod:
        return f"the token is bound to pod {sa[0]}/{who.pod}; it may not act for pod {pod}"
    return None


def incident_object(req: ApprovalRequest, *, requester: str, now: dt.datetime) -> dict[str, Any]:
    """The AIIncident that tracks one approval request."""
    policy = (
        req.policy.split("/", 1)[1] if req.policy.startswith(f"{req.namespace}/") else req.policy
    )
    stamp = rfc3339(now)
    reason = f"held for human review: {req.summary}" if req.summary else "held for human review"
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "AIIncident",
        "metadata": {
            "name": incident_name(req.request_id),
            "namespace": req.namespace,
            "labels": {LABEL: "true"},
            "annotations": {REQUESTER_ANNOTATION: requester},
        },
        "spec": {
            "severity": Severity.MEDIUM.value,
            "policy": policy,
            "pod": req.pod,
            "guardrail": GUARDRAIL,
            "reason": reason[:1024],
            "count": 1,
            "firstSeen": stamp,
            "lastSeen": stamp,
            "state": PENDING.value,
            "approval": {
                "requestId": req.request_id,
                "model": req.model,
                "user": req.user,
                "summary": req.summary,
                "expiresAt": rfc3339(now + dt.timedelta(seconds=req.timeout_seconds)),
            },
        },
    }


def view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a sidecar is told about an approval."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    approval = spec.get("approval") or {}
    state = str(spec.get("state") or PENDING.value)
    history = (obj.get("status") or {}).get("history") or []
    last: dict[str, Any] = next((h for h in reversed(history) if h.get("to") == state), {})
    return {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "state": state,
        "requestId": approval.get("requestId"),
        "expiresAt": approval.get("expiresAt"),
        "decidedBy": approval.get("decidedBy") or last.get("actor"),
        "decidedAt": approval.get("decidedAt") or last.get("time"),
        "note": last.get("note") or "",
    }


def settled(obj: Mapping[str, Any]) -> bool:
    """Decided, and its history says so (a decision writes the state, then the history)."""
    state = (obj.get("spec") or {}).get("state")
    if state == PENDING.value:
        return False
    history = (obj.get("status") or {}).get("history") or []
    return any(h.get("to") == state for h in history)


def is_due(obj: Mapping[str, Any], now: dt.datetime) -> bool:
    """Pending and past its expiry."""
    spec = obj.get("spec") or {}
    if spec.get("state") != PENDING.value:
        return False
    expires = parse_time((spec.get("approval") or {}).get("expiresAt"))
    return expires is not None and expires <= now


def _path(namespace: str | None, name: str | None = None, *, status: bool = False) -> str:
    return kube.path(
        plural=PLURAL_INCIDENT,
        group=API_GROUP,
        version=API_VERSION,
        namespace=namespace,
        name=name,
        subresource="status" if status else None,
    )


# --------------------------------------------------------------------------- the service


class Approvals:
    """The collector's approvals: create, long-poll, expire. One per collector."""

    def __init__(
        self,
        api: kube.Client,
        authenticator: auth.Authenticator | None,
        *,
        poll_seconds: float = POLL_SECONDS,
        sweep_seconds: float = SWEEP_SECONDS,
        on_created: Callable[[str, str], None] | None = None,
    ) -> None:
        self.api = api
        self.auth = authenticator
        self.on_created = on_created
        """Told (namespace, name) of each new approval: the incident notifier, so a person
        learns that a request waits for them. Must not block."""
        self.poll_seconds = poll_seconds
        self.sweep_seconds = sweep_seconds
        self.created: set[tuple[str, str]] = set()
        """Approvals this collector raised that may still be pending (swept even when the
        cluster-wide list is forbidden: a namespaced operator)."""
        self._list_forbidden = False

    async def create(self, req: ApprovalRequest, *, requester: str) -> tuple[int, dict[str, Any]]:
        obj = incident_object(req, requester=requester, now=utc_now())
        name = obj["metadata"]["name"]
        try:
            created = await self.api.create(_path(req.namespace), obj)
        except kube.ApiError as e:
            if e.status != 409:
                raise
            existing = await self.api.get(_path(req.namespace, name))
            asked_by = ((existing.get("metadata") or {}).get("annotations") or {}).get(
                REQUESTER_ANNOTATION
            )
            if asked_by != requester or view(existing)["requestId"] != req.request_id:
                return 409, {
                    "error": f"AIIncident {req.namespace}/{name} exists for another request"
                }
            return 200, view(existing)
        entry = {
            "time": transitions.now(),
            "actor": requester,
            "from": "",
            "to": PENDING.value,
            "note": f"request {req.request_id} of pod {req.pod} held for human review",
        }
        try:
            created = await self.api.patch(
                _path(req.namespace, name, status=True),
                {
                    "metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
                    "status": {"history": [entry]},
                },
            )
        except kube.KubeError as e:  # the approval stands; only its first history line is lost
            log.warning(
                "approval history not written",
                extra={"fields": {"incident": f"{req.namespace}/{name}", "error": str(e)}},
            )
        if self.on_created is not None:
            try:
                self.on_created(req.namespace, name)
            except Exception:
                log.exception("approval notification could not be queued")
        log.warning(
            "human review requested",
            extra={
                "fields": {
                    "incident": f"{req.namespace}/{name}",
                    "pod": req.pod,
                    "policy": req.policy,
                    "expires_at": obj["spec"]["approval"]["expiresAt"],
                    "approve": f"kubectl aiguard approve {name} -n {req.namespace}",
                }
            },
        )
        self.created.add((req.namespace, name))
        return 201, view(created)

    async def expire_if_due(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Deny a pending approval whose time is up (recorded as ``aiguard (timeout)``);
        return the object as it now is."""
        if not is_due(obj, utc_now()):
            return obj
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            updated = await transitions.transition(
                self.api,
                namespace,
                name,
                to=IncidentState.DENIED,
                actor=TIMEOUT_ACTOR,
                note="nobody approved the request before it expired",
                allowed_from={PENDING},
                spec_patch={
                    "approval": {"decidedBy": TIMEOUT_ACTOR, "decidedAt": rfc3339(utc_now())}
                },
            )
        except transitions.IllegalTransition:  # decided meanwhile, by a person or a peer
            return await self.api.get(_path(namespace, name))
        log.info("approval expired", extra={"fields": {"incident": f"{namespace}/{name}"}})
        return updated

    async def wait(
        self, namespace: str, name: str, *, wait: float, requester: str | None
    ) -> dict[str, Any]:
        """The approval once decided, or as it is after ``wait`` seconds. Raises
        ``kube.NotFound``, :class:`auth.AuthError` (another ServiceAccount's approval)."""
        deadline = time.monotonic() + wait
        checked = False
        settle_by: float | None = None
        while True:
            obj = await self.api.get(_path(namespace, name))
            if not checked:
                annotations = (obj.get("metadata") or {}).get("annotations") or {}
                if requester is not None and annotations.get(REQUESTER_ANNOTATION) != requester:
                    raise auth.AuthError(403, f"{requester} did not request approval {name}")
                if (obj.get("spec") or {}).get("approval") is None:
                    raise kube.NotFound(404, "NotFound", f"{name} is not an approval", "GET", name)
                checked = True
            obj = await self.expire_if_due(obj)
            now = time.monotonic()
            if (obj.get("spec") or {}).get("state") != PENDING.value:
                # Decided. Its history entry (who, the note) follows the state by one write:
                # wait for it briefly, so the sidecar can tell the client who decided and why.
                settle_by = settle_by or now + SETTLE_SECONDS
                if settled(obj) or now >= settle_by:
                    return obj
            elif now >= deadline:
                return obj
            await asyncio.sleep(
                self.poll_seconds if settle_by else min(self.poll_seconds, deadline - now)
            )

    async def sweep(self) -> int:
        """Expire every due approval in the cluster (or, when listing is forbidden, every one
        this collector raised); returns how many were denied."""
        items: list[dict[str, Any]] = []
        if not self._list_forbidden:
            try:
                items = await self.api.list(_path(None), label_selector=f"{LABEL}=true")
            except kube.ApiError as e:
                if e.status != 403:
                    raise
                self._list_forbidden = True
                log.warning(
                    "approvals: may not list AIIncidents cluster-wide; expiring only the "
                    "approvals this collector raised",
                    extra={"fields": {"error": e.message}},
                )
        if self._list_forbidden:
            for namespace, name in sorted(self.created):
                obj = await self.api.get_or_none(_path(namespace, name))
                if obj is not None:
                    items.append(obj)
        now = utc_now()
        denied = 0
        for obj in items:
            if is_due(obj, now):
                obj = await self.expire_if_due(obj)
                denied += (obj.get("spec") or {}).get("state") == IncidentState.DENIED.value
            if (obj.get("spec") or {}).get("state") != PENDING.value:
                meta = obj.get("metadata") or {}
                self.created.discard((meta.get("namespace", ""), meta.get("name", "")))
        return denied

    async def run_sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                await self.sweep()
            except (kube.KubeError, OSError, TimeoutError) as e:
                log.warning("approval expiry sweep failed", extra={"fields": {"error": str(e)}})
            except Exception:
                log.exception("approval expiry sweep failed")


# --------------------------------------------------------------------------- HTTP


APPROVALS: Final = web.AppKey("approvals", Approvals)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _caller(request: web.Request) -> auth.Identity | None:
    service = request.app[APPROVALS]
    if service.auth is None:
        return None
    return await service.auth.identify(request.headers.get("Authorization"), writer=True)


def _unavailable(e: Exception) -> web.Response:
    log.warning("approvals: Kubernetes API error", extra={"fields": {"error": str(e)}})
    resp = _error(503, f"the collector cannot write or read AIIncidents: {e}")
    resp.headers["Retry-After"] = "2"
    return resp


async def post_approval(request: web.Request) -> web.Response:
    who = await _caller(request)
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        return _error(413, "an approval request is at most 16 KiB")
    raw = await request.read()
    if len(raw) > MAX_REQUEST_BYTES:
        return _error(413, "an approval request is at most 16 KiB")
    try:
        req = parse_request(raw)
    except Invalid as e:
        return _error(400, str(e))
    requester = "anonymous"
    if who is not None:
        why = caller_problem(who, req.namespace, req.pod)
        if why is not None:
            log.warning(
                "refused an approval request from another workload",
                extra={"fields": {"caller": who.username, "why": why}},
            )
            return _error(403, why)
        requester = who.username
    try:
        status, body = await request.app[APPROVALS].create(req, requester=requester)
    except (kube.KubeError, OSError, TimeoutError) as e:
        return _unavailable(e)
    return web.json_response(body, status=status)


async def get_approval(request: web.Request) -> web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    who = await _caller(request)
    if who is not None:
        why = caller_problem(who, namespace, None)
        if why is not None:
            return _error(403, why)
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        return _error(400, "wait must be a number of seconds")
    wait = max(0.0, min(wait, MAX_WAIT))
    try:
        obj = await request.app[APPROVALS].wait(
            namespace, name, wait=wait, requester=who.username if who is not None else None
        )
    except kube.NotFound:
        return _error(404, f"no approval {namespace}/{name}")
    except (kube.KubeError, OSError, TimeoutError) as e:
        return _unavailable(e)
    return web.json_response(view(obj))


def install(
    app: web.Application,
    *,
    api: kube.Client,
    authenticator: auth.Authenticator | None,
    on_created: Callable[[str, str], None] | None = None,
) -> Approvals:
    """Add the approvals routes and the expiry sweeper to the collector's application."""
    service = Approvals(api, authenticator, on_created=on_created)
    app[APPROVALS] = service
    app.router.add_post(audit.APPROVALS_PATH, post_approval)
    app.router.add_get(audit.APPROVALS_PATH + "/{namespace}/{name}", get_approval)

    async def sweeper(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(service.run_sweeper(), name="aiguard-approvals-sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sweeper)
    return service


# --------------------------------------------------------------------------- the CLI


class DecisionError(Exception):
    """The approval cannot be decided (the message says why)."""


async def decide(
    api: kube.Client, namespace: str, name: str, *, approve: bool, note: str = ""
) -> dict[str, Any]:
    """Approve or deny approval ``namespace/name`` as the caller the API server names."""
    obj = await api.get(_path(namespace, name))
    spec = obj.get("spec") or {}
    approval = spec.get("approval")
    if not approval:
        raise DecisionError(f"AIIncident {name} is not an approval request (no spec.approval)")
    state = str(spec.get("state") or "")
    if state != PENDING.value:
        by = view(obj)["decidedBy"]
        raise DecisionError(f"AIIncident {name} is already {state}" + (f" (by {by})" if by else ""))
    expires = parse_time(approval.get("expiresAt"))
    if expires is not None and expires <= utc_now():
        raise DecisionError(
            f"AIIncident {name} expired at {approval.get('expiresAt')}: the request was denied "
            "because nobody decided in time"
        )
    actor = await transitions.whoami(api)
    to = IncidentState.APPROVED if approve else IncidentState.DENIED
    try:
        return await transitions.transition(
            api,
            namespace,
            name,
            to=to,
            actor=actor,
            note=note,
            allowed_from={PENDING},
            spec_patch={"approval": {"decidedBy": actor, "decidedAt": rfc3339(utc_now())}},
        )
    except transitions.TransitionError as e:
        raise DecisionError(str(e)) from e


def cmd_decide(args: argparse.Namespace, out: TextIO) -> int:
    creds = kube.load(args.kubeconfig, context=args.context)
    namespace = args.namespace or creds.namespace
    approve = args.command == "approve"

    async def run() -> dict[str, Any]:
        async with kube.Client(creds) as api:
            return await decide(api, namespace, args.name, approve=approve, note=args.note or "")

    try:
        obj = asyncio.run(run())
    except DecisionError as e:
        print(f"kubectl-aiguard: {e}", file=sys.stderr)
        return 1
    v = view(obj)
    approval = (obj.get("spec") or {}).get("approval") or {}
    pod = (obj.get("spec") or {}).get("pod")
    out.write(
        f"aiincident/{args.name} {v['state']} by {v['decidedBy']} "
        f"(request {approval.get('requestId')}, model {approval.get('model') or '-'}, "
        f"user {approval.get('user') or '-'}, pod {namespace}/{pod or '-'})\n"
    )
    return 0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register ``approve`` and ``deny`` in the ``kubectl aiguard`` parser."""
    for verb, what in (("approve", "let it go on"), ("deny", "refuse it (403)")):
        p = sub.add_parser(
            verb,
            parents=[common],
            help=f"{verb} a request held for human review",
            description=f"Decide on a request held for human review: {what}. NAME is the "
            "AIIncident in state pending-approval (kubectl get aiincidents). Needs RBAC patch "
            "on aiincidents and aiincidents/status; the API server's name for you is recorded.",
        )
        p.add_argument("name", metavar="NAME", help="the AIIncident (review-...)")
        p.add_argument("-n", "--namespace", help="namespace (default: the context's)")
        p.add_argument("--note", default="", help="a note for the record (and the client)")
        p.set_defaults(func=cmd_decide)
