"""Moving an AIIncident from one state to another, recorded, and knowing who asked.

Shared by ``kubectl aiguard ack|resolve`` (this package) and ``approve|deny`` (human review).

A transition is two writes:

1. ``spec.state`` (and any ``spec_patch``) with a merge patch that carries the
   ``metadata.resourceVersion`` the caller read: the API server applies it only if the object
   is unchanged since, so of two concurrent transitions from the same state exactly one wins;
   the loser re-reads, and if the new state is no longer one it may leave, it fails with
   :class:`IllegalTransition` (never silently overwrites the winner's decision);
2. ``status.history`` gets ``{time, actor, from, to, note}`` appended through the status
   subresource, again conditional on the resourceVersion (re-read and re-appended on a
   conflict, e.g. when the collector bumped the incident's count in between).

Legal moves (:data:`TRANSITIONS`)::

    open             → acknowledged, resolved
    acknowledged     → resolved
    resolved         → open            (re-open)
    pending-approval → approved, denied
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
from typing import Any, Final

from aiguard_api.constants import API_GROUP, API_VERSION, PLURAL_INCIDENT
from aiguard_api.policy import IncidentState
from aiguard_operator import kube

log = logging.getLogger("aiguard.incidents")

PLURAL: Final = PLURAL_INCIDENT
TRANSITIONS: Final[dict[IncidentState, frozenset[IncidentState]]] = {
    IncidentState.OPEN: frozenset({IncidentState.ACKNOWLEDGED, IncidentState.RESOLVED}),
    IncidentState.ACKNOWLEDGED: frozenset({IncidentState.RESOLVED}),
    IncidentState.RESOLVED: frozenset({IncidentState.OPEN}),
    IncidentState.PENDING_APPROVAL: frozenset({IncidentState.APPROVED, IncidentState.DENIED}),
    IncidentState.APPROVED: frozenset(),
    IncidentState.DENIED: frozenset(),
}
"""Which states each state may move to (when the caller passes no ``allowed_from``)."""
MAX_CONFLICTS: Final = 5
"""Attempts at the history append when others keep changing the object."""
UNKNOWN_ACTOR: Final = "unknown"


class TransitionError(Exception):
    """The transition was not made; the message says why."""


class IllegalTransition(TransitionError):
    """The incident is in a state the requested transition may not leave."""

    def __init__(self, name: str, current: str, to: IncidentState, allowed: set[str]) -> None:
        allowed_text = ", ".join(sorted(allowed)) or "none"
        super().__init__(
            f"AIIncident {name} is {current}: cannot move it to {to.value} "
            f"(allowed from: {allowed_text})"
        )
        self.current = current
        self.to = to


def incident_path(namespace: str, name: str | None = None, *, status: bool = False) -> str:
    return kube.path(
        plural=PLURAL,
        group=API_GROUP,
        version=API_VERSION,
        namespace=namespace,
        name=name,
        subresource="status" if status else None,
    )


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def whoami(api: kube.Client) -> str:
    """The caller's username, as the API server authenticates it (SelfSubjectReview).

    Falls back, in order, to ``system:serviceaccount:NS:NAME`` when running in a pod
    (the SelfSubjectReview API disabled or forbidden), then to ``"unknown"`` — never to a
    name the caller typed, so history records who the API server says acted.
    """
    try:
        review = await api.create(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        username = (review.get("status") or {}).get("userInfo", {}).get("username")
        if isinstance(username, str) and username:
            return username
    except (kube.KubeError, OSError) as e:
        log.warning(
            "SelfSubjectReview failed; the actor falls back", extra={"fields": {"error": str(e)}}
        )
    if api.creds.source == "in-cluster":
        sa_dir = kube.SERVICE_ACCOUNT_DIR
        try:
            token = (sa_dir / "token").read_text().strip()
            ns = (sa_dir / "namespace").read_text().strip()
        except OSError:
            return UNKNOWN_ACTOR
        name = _service_account_of(token)
        if name:
            return f"system:serviceaccount:{ns}:{name}"
    return UNKNOWN_ACTOR


def _service_account_of(token: str) -> str | None:
    """The ServiceAccount name in a (bound) token's claims, unverified: a label only."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        name = claims["kubernetes.io"]["serviceaccount"]["name"]
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    return name if isinstance(name, str) else None


def _state_of(obj: dict[str, Any]) -> str:
    return str((obj.get("spec") or {}).get("state") or IncidentState.OPEN.value)


async def transition(
    api: kube.Client,
    namespace: str,
    name: str,
    *,
    to: IncidentState,
    actor: str,
    note: str = "",
    allowed_from: set[IncidentState] | None = None,
    spec_patch: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Move incident ``namespace/name`` to ``to``, recorded; return the updated object.

    ``allowed_from``: the states this transition may start from (default: every state
    :data:`TRANSITIONS` lets move to ``to``). ``spec_patch``: more spec fields to set in the
    same conditional write (e.g. ``{"approval": {...}}``); it cannot change ``state``.

    Raises :class:`IllegalTransition` (wrong state, including losing a race),
    :class:`kube.NotFound` (no such incident), :class:`TransitionError` (history could not be
    written after :data:`MAX_CONFLICTS` conflicts: the state change stands), ``kube.ApiError``.
    """
    if allowed_from is None:
        allowed = {s.value for s, targets in TRANSITIONS.items() if to in targets}
    else:
        allowed = {s.value for s in allowed_from}
    obj = await api.get(incident_path(namespace, name))
    current = _state_of(obj)
    if current not in allowed:
        raise IllegalTransition(name, current, to, allowed)
    spec = {k: v for k, v in (spec_patch or {}).items() if k != "state"}
    spec["state"] = to.value
    body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "spec": spec}
    try:
        updated = await api.patch(incident_path(namespace, name), body)
    except kube.ApiError as e:
        if e.status != 409:
            raise
        # Someone changed the incident since we read it: decide again on what is there now.
        fresh = await api.get(incident_path(namespace, name))
        fresh_state = _state_of(fresh)
        if fresh_state not in allowed:
            raise IllegalTransition(name, fresh_state, to, allowed) from None
        # Still legal (an unrelated change, e.g. a count update): try once more, conditional.
        body["metadata"]["resourceVersion"] = fresh["metadata"]["resourceVersion"]
        try:
            updated = await api.patch(incident_path(namespace, name), body)
        except kube.ApiError as e2:
            if e2.status == 409:
                raise TransitionError(
                    f"AIIncident {name} keeps changing under us; nothing was changed, try again"
                ) from None
            raise
        current = fresh_state
    entry = {"time": now(), "actor": actor, "from": current, "to": to.value, "note": note}
    return await _append_history(api, namespace, name, updated, entry)


async def _append_history(
    api: kube.Client, namespace: str, name: str, obj: dict[str, Any], entry: dict[str, Any]
) -> dict[str, Any]:
    for attempt in range(MAX_CONFLICTS):
        status = dict(obj.get("status") or {})
        history = list(status.get("history") or [])
        history.append(entry)
        body = {
            "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
            "status": {"history": history},
        }
        try:
            return await api.patch(incident_path(namespace, name, status=True), body)
        except kube.ApiError as e:
            if e.status != 409:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
            obj = await api.get(incident_path(namespace, name))
    raise TransitionError(
        f"AIIncident {name} moved to {entry['to']} but its history could not be written "
        f"after {MAX_CONFLICTS} conflicting updates"
    )
