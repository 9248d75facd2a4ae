"""The collector's incident hook: stored audit events in, AIIncident objects out.

::

    POST /v1/events ─► store.insert ─► IncidentManager.submit(batch)      (sync, O(1), never
                                          │ bounded queue                   raises, never waits)
                                          ▼
                       worker: derive signals (derive.py) ─► which windows changed
                               recount each changed window FROM THE STORE ─► create/patch the
                               AIIncident (deterministic name), Event on it, notification

Why recount from the store instead of adding up what arrives: the store is the source of
truth and already drops duplicates, so an incident's ``count`` always equals the audit
events in its window (the evidence bundle compares them), whatever was re-delivered, whatever
arrived out of order, and a restarted collector (or a second one on a shared PostgreSQL store)
reaches the same numbers. Clean traffic costs nothing beyond a substring check per event
(:func:`may_signal`); a window is recounted only when a batch brought a signal into it, at
most once per ``recount_interval`` (a burst coalesces into one recount), reading the store in
pages of :data:`PAGE` so the SQLite store's inserts interleave with it.

Not losing work: if the queue is full, the batch is not queued but the earliest event time is
remembered and the worker rescans the store from there; at start the worker rescans the last
``rescan_seconds`` (what a previous process accepted but had not processed). Chain gaps
(``audit-delivery-failure``) are confirmed after ``gap_grace_seconds`` so a batch that is
merely late does not raise a critical incident.

Settings (environment of the operator, with the collector's)::

    AIGUARD_INCIDENTS                          false: no automatic incidents (default true)
    AIGUARD_INCIDENTS_DENIALS_THRESHOLD        access denials per pod and window (5)
    AIGUARD_INCIDENTS_GAP_GRACE_SECONDS        wait before a chain gap is an incident (30)
    AIGUARD_INCIDENTS_RESCAN_SECONDS           look-back of the rescan at start (3600)
    AIGUARD_INCIDENTS_NOTIFY_ATTEMPTS          webhook attempts per notification (5)
    AIGUARD_INCIDENTS_NOTIFY_BACKOFF_SECONDS   first retry delay, doubled each time (1)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import pydantic

from aiguard_api import audit
from aiguard_api.constants import (
    API_GROUP,
    API_VERSION,
    GROUP_VERSION,
    KIND_INCIDENT,
    LABEL_MANAGED_BY,
    PLURAL_POLICY,
)
from aiguard_api.policy import Incidents
from aiguard_operator import events, kube
from aiguard_operator.collector.store import EventQuery, Ingest, Store, encode_cursor
from aiguard_operator.incidents import derive, notify
from aiguard_operator.incidents.transitions import incident_path

log = logging.getLogger("aiguard.incidents")

MANAGED_BY: Final = "aiguard-operator"
LABEL_KIND: Final = f"{API_GROUP}/incident-kind"
LABEL_POLICY: Final = f"{API_GROUP}/policy"
ANNOTATION_WINDOW: Final = f"{API_GROUP}/window"
"""``START/SECONDS`` of the window an incident aggregates (RFC 3339 start)."""
DRIFT_IDS_KEPT: Final = 10_000
PAGE: Final = 500
"""Events per store read: the SQLite store serves inserts on the same thread, between pages."""
# A cheap pre-filter over the stored body, which is canonical JSON (aiguard_api.audit.canonical:
# sorted keys, no whitespace): an event none of these occur in carries no signal.
_MARKERS: Final = (
    '"guardrail":"prompt_injection"',
    '"guardrail":"secrets"',
    '"guardrail":"moderation"',
    '"aiguard.outcome":"access_denied"',
    '"aiguard.outcome":"identity_failed"',
    f'"{derive.DRIFT_FIELD}":{{',
    f'"{derive.DRIFT_FIELD}":true',
    f'"{derive.DRIFT_FIELD}":"',
)


def may_signal(body: str) -> bool:
    """False when a stored event (canonical JSON) certainly carries no signal: the
    pre-filter that keeps clean traffic from being parsed again."""
    return any(m in body for m in _MARKERS)


@dataclass(frozen=True, slots=True)
class IncidentSettings:
    enabled: bool = True
    queue_size: int = 1000
    """Batches waiting for the worker; beyond, the worker rescans the store instead."""
    denials_threshold: int = derive.ACCESS_DENIALS_THRESHOLD
    gap_grace_seconds: float = 30.0
    rescan_seconds: float = 3600.0
    policy_ttl: float = 30.0
    recount_interval: float = 1.0
    """Seconds between two recounts of one window: under a burst, recounts coalesce."""
    notify_attempts: int = 5
    notify_backoff: float = 1.0
    notify_timeout: float = 10.0
    notify_queue_size: int = 1000


def settings_from_env(env: Mapping[str, str] | None = None) -> IncidentSettings:
    env = os.environ if env is None else env

    def num(name: str, default: float, low: float, high: float) -> float:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r}: expected a number") from None
        if not low <= value <= high:
            raise ValueError(f"{name}={raw!r}: expected {low:g}..{high:g}")
        return value

    enabled = env.get("AIGUARD_INCIDENTS", "true").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )
    return IncidentSettings(
        enabled=enabled,
        denials_threshold=int(num("AIGUARD_INCIDENTS_DENIALS_THRESHOLD", 5, 1, 1_000_000)),
        gap_grace_seconds=num("AIGUARD_INCIDENTS_GAP_GRACE_SECONDS", 30, 0, 86400),
        rescan_seconds=num("AIGUARD_INCIDENTS_RESCAN_SECONDS", 3600, 0, 86400 * 7),
        notify_attempts=int(num("AIGUARD_INCIDENTS_NOTIFY_ATTEMPTS", 5, 1, 20)),
        notify_backoff=num("AIGUARD_INCIDENTS_NOTIFY_BACKOFF_SECONDS", 1, 0, 60),
    )


@dataclass(frozen=True, slots=True)
class PolicyIncidents:
    """A policy's ``spec.incidents`` (defaults when the policy is gone or unreadable)."""

    config: Incidents
    found: bool


@dataclass(frozen=True, slots=True)
class Group:
    """Events of one policy in one window: the unit that is recounted."""

    namespace: str
    policy: str
    window_start: int
    window_seconds: int


def _time(ts: float) -> str:
    return audit.format_time(ts)


def manifest(agg: derive.Aggregate) -> dict[str, Any]:
    """The AIIncident for an aggregate (state open)."""
    key = agg.key
    info = derive.KINDS[key.kind]
    return {
        "apiVersion": GROUP_VERSION,
        "kind": KIND_INCIDENT,
        "metadata": {
            "name": derive.incident_name(key),
            "namespace": key.namespace,
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_KIND: key.kind.value,
                LABEL_POLICY: key.policy,
            },
            "annotations": {
                ANNOTATION_WINDOW: f"{_time(key.window_start)}/{key.window_seconds}",
            },
        },
        "spec": {
            "severity": info.severity.value,
            "policy": key.policy,
            "pod": key.pod or None,
            "guardrail": info.guardrail,
            "reason": derive.reason(agg),
            "count": agg.count,
            "firstSeen": _time(agg.first_seen),
            "lastSeen": _time(agg.last_seen),
            "state": "open",
        },
    }


def _counts_differ(spec: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    return any(spec.get(k) != want[k] for k in ("count", "firstSeen", "lastSeen", "reason"))


class IncidentManager:
    """Owns the queue, the worker and the notifier. ``submit`` is the collector's hook."""

    def __init__(
        self,
        api: kube.Client,
        store: Store,
        settings: IncidentSettings | None = None,
        *,
        recorder: events.Recorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.store = store
        self.settings = settings or IncidentSettings()
        self.recorder = recorder or events.Recorder(
            component=MANAGED_BY, instance=os.environ.get("HOSTNAME", "aiguard-operator")
        )
        self._own_recorder = recorder is None
        self._clock = clock
        self._queue: asyncio.Queue[Sequence[Ingest]] = asyncio.Queue(self.settings.queue_size)
        self._notify_queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(
            self.settings.notify_queue_size
        )
        self._notifying: set[tuple[str, str]] = set()
        self._rescan_from_us: int | None = None
        self._gap_due: dict[str, float] = {}
        self._pending: dict[Group, float] = {}
        """Windows to recount, and from when (at most one recount per recount_interval)."""
        self._last_recount: dict[Group, float] = {}
        self._chain_checks: dict[str, float] = {}
        """Chains that received events, and when to look at their counts."""
        self._policies: dict[tuple[str, str], tuple[float, PolicyIncidents]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._idle = asyncio.Event()
        self._drift_seen: OrderedDict[str, None] = OrderedDict()
        """Ids of drift events already reported as a pod Event (a duplicate is not)."""
        self.dropped_batches = 0
        """Batches not queued (full queue): covered by a rescan, counted for visibility."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, rescan: bool = True) -> None:
        self._session = aiohttp.ClientSession()
        if rescan and self.settings.rescan_seconds > 0:
            self._rescan_from_us = int((self._clock() - self.settings.rescan_seconds) * 1e6)
        self._tasks = [
            asyncio.create_task(self._work(), name="aiguard-incidents"),
            asyncio.create_task(self._notifier(), name="aiguard-incident-notify"),
        ]
        if self._own_recorder:
            self._tasks.append(
                asyncio.create_task(self.recorder.run(self.api), name="aiguard-incident-events")
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ the hook

    def submit(self, batch: Sequence[Ingest]) -> None:
        """Hand a stored batch to the worker. Never raises, never waits."""
        if not batch:
            return
        try:
            self._idle.clear()
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.dropped_batches += 1
            earliest = min(e.time_us for e in batch)
            if self._rescan_from_us is None or earliest < self._rescan_from_us:
                self._rescan_from_us = earliest
            log.warning(
                "incident queue full: the batch will be covered by a rescan of the store",
                extra={"fields": {"events": len(batch)}},
            )

    async def drained(self) -> None:
        """Wait until the worker has processed everything submitted (tests, shutdown);
        bound it with ``asyncio.timeout``."""
        await self._idle.wait()

    # ------------------------------------------------------------------ the worker

    async def _work(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._step()
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception:
                # The failed windows are retried by a rescan (_step marked where it starts).
                log.exception("incident processing failed; retrying in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(60.0, delay * 2)

    async def _step(self) -> None:
        if self._rescan_from_us is not None:
            since, self._rescan_from_us = self._rescan_from_us, None
            try:
                await self.rescan(since)
            except Exception:
                self._rescan_after_failure(since)
                raise
        batches: list[Sequence[Ingest]] = []
        if self._queue.empty():
            if self._settled():
                self._idle.set()
            with contextlib.suppress(TimeoutError):
                batches.append(await asyncio.wait_for(self._queue.get(), self._next_wait()))
        while not self._queue.empty():
            batches.append(self._queue.get_nowait())
        if batches:
            ingests = [e for b in batches for e in b]
            try:
                await self.process(ingests)
            except Exception:
                self._rescan_after_failure(min(e.time_us for e in ingests))
                raise
        await self._recount_due()
        await self._check_chains_due()
        await self._check_due_gaps()
        if self._queue.empty() and self._settled():
            self._idle.set()

    def _settled(self) -> bool:
        return (
            not self._pending
            and not self._chain_checks
            and not self._gap_due
            and self._rescan_from_us is None
        )

    def _rescan_after_failure(self, since_us: int) -> None:
        if self._rescan_from_us is None or since_us < self._rescan_from_us:
            self._rescan_from_us = since_us

    def _next_wait(self) -> float:
        due = [*self._gap_due.values(), *self._pending.values(), *self._chain_checks.values()]
        if not due:
            return 3600.0
        return max(0.0, min(due) - self._clock())

    async def process(self, ingests: Sequence[Ingest], *, fresh: bool = True) -> None:
        """Mark every window the events bring a signal into for a recount; schedule gap
        checks. ``fresh``: just accepted by the collector (not a rescan): pod Events for model
        drift are written for fresh events only, once per event id."""
        # Off the event loop: the collector's requests are served meanwhile.
        parsed: list[dict[str, Any]] = await asyncio.to_thread(
            lambda: [json.loads(e.body) for e in ingests if may_signal(e.body)]
        )
        for event in parsed:
            found = derive.signals(event)
            if not found:
                continue
            ns, policy = str(event[audit.NAMESPACE]), str(event[audit.POLICY_NAME])
            cfg = await self.policy_incidents(ns, policy)
            window = cfg.config.window_seconds
            ts = audit.parse_time(str(event[audit.TIME]))
            group = Group(ns, policy, derive.window_start(ts, window), window)
            if group not in self._pending:
                last = self._last_recount.get(group)
                self._pending[group] = (
                    0.0 if last is None else last + self.settings.recount_interval
                )
            drifted = any(s.kind is derive.Kind.MODEL_DRIFT for s in found)
            if drifted and fresh and self._first_drift_report(str(event[audit.ID])):
                self._drift_event(event)
        check = self._clock() + self.settings.recount_interval
        for instance in {e.instance for e in ingests}:
            self._chain_checks.setdefault(instance, check)

    async def _check_chains_due(self) -> None:
        """Whether chains that received events have holes (a count query per chain, at most
        once per ``recount_interval``); a hole is confirmed after ``gap_grace_seconds``."""
        now = self._clock()
        for instance in [i for i, t in self._chain_checks.items() if t <= now]:
            del self._chain_checks[instance]
            info = await self.store.chain(instance)
            if info is None:
                continue
            start = info.start.sequence if info.start is not None else None
            if derive.chain_missing(stored=info.events, head=info.last_sequence, start=start):
                self._gap_due.setdefault(instance, now + self.settings.gap_grace_seconds)

    async def _recount_due(self) -> None:
        now = self._clock()
        due = sorted(
            (g for g, t in self._pending.items() if t <= now),
            key=lambda g: (g.namespace, g.policy, g.window_start),
        )
        for group in due:
            del self._pending[group]
            try:
                await self.recount(group)
            except Exception:
                self._pending[group] = now + self.settings.recount_interval
                raise
            self._last_recount[group] = self._clock()
        horizon = now - self.settings.recount_interval
        for group in [g for g, t in self._last_recount.items() if t < horizon]:
            del self._last_recount[group]

    async def rescan(self, since_us: int) -> None:
        """Derive from every stored event since ``since_us`` (start, or after an overflow)."""
        after: str | None = None
        instances: set[str] = set()
        while True:
            page = await self.store.events(
                EventQuery(start_us=since_us, order="time", after=after, limit=PAGE)
            )
            batch = await asyncio.to_thread(_ingests, page.bodies)
            instances.update(i.instance for i in batch)
            await self.process(batch, fresh=False)
            if page.next is None:
                break
            after = page.next
        log.info(
            "incident rescan done",
            extra={"fields": {"since": _time(since_us / 1e6), "chains": len(instances)}},
        )

    async def recount(self, group: Group) -> None:
        """Count one window of one policy from the store; write the incidents it holds."""
        bodies: list[str] = []
        after: str | None = None
        while True:
            page = await self.store.events(
                EventQuery(
                    namespace=group.namespace,
                    policy=group.policy,
                    start_us=group.window_start * 1_000_000,
                    end_us=(group.window_start + group.window_seconds) * 1_000_000,
                    order="time",
                    after=after,
                    limit=PAGE,
                )
            )
            bodies.extend(await asyncio.to_thread(_signalling, page.bodies))
            if page.next is None:
                break
            after = page.next
        parsed = await asyncio.to_thread(lambda: [json.loads(b) for b in bodies])
        aggregates = derive.aggregate(parsed, group.window_seconds)
        cfg = await self.policy_incidents(group.namespace, group.policy)
        for agg in aggregates.values():
            if derive.qualifies(
                agg,
                cfg.config.severity_threshold,
                denials_threshold=self.settings.denials_threshold,
            ):
                await self.upsert(agg, cfg)

    async def upsert(self, agg: derive.Aggregate, cfg: PolicyIncidents) -> dict[str, Any]:
        """Create the aggregate's AIIncident, or bring its counts up to date."""
        want = manifest(agg)
        name, ns = want["metadata"]["name"], agg.key.namespace
        obj = await self.api.get_or_none(incident_path(ns, name))
        changed = False
        if obj is None:
            try:
                obj = await self.api.create(incident_path(ns), want)
                changed = True
                log.info(
                    "incident opened",
                    extra={
                        "fields": {
                            "incident": f"{ns}/{name}",
                            "severity": want["spec"]["severity"],
                            "count": agg.count,
                        }
                    },
                )
            except kube.ApiError as e:
                if e.status != 409:
                    raise
                obj = await self.api.get(incident_path(ns, name))
        if obj is not None and _counts_differ(obj.get("spec") or {}, want["spec"]):
            patch = {k: want["spec"][k] for k in ("count", "firstSeen", "lastSeen", "reason")}
            obj = await self.api.patch(incident_path(ns, name), {"spec": patch})
            changed = True
        assert obj is not None
        if changed:
            info = derive.KINDS[agg.key.kind]
            self.recorder.record(
                events.ObjectRef(
                    api_version=GROUP_VERSION,
                    kind=KIND_INCIDENT,
                    name=name,
                    namespace=ns,
                    uid=(obj.get("metadata") or {}).get("uid"),
                ),
                type="Warning",
                reason=info.event_reason,
                message=want["spec"]["reason"],
            )
        if cfg.config.notify is not None and not (obj.get("status") or {}).get("notified"):
            self._queue_notification(ns, name)
        return obj

    def _first_drift_report(self, event_id: str) -> bool:
        if event_id in self._drift_seen:
            return False
        self._drift_seen[event_id] = None
        while len(self._drift_seen) > DRIFT_IDS_KEPT:
            self._drift_seen.popitem(last=False)
        return True

    def _drift_event(self, event: Mapping[str, Any]) -> None:
        ns, pod = str(event[audit.NAMESPACE]), str(event[audit.POD])
        drift = event.get(derive.DRIFT_FIELD)
        before = drift if isinstance(drift, Mapping) else {}

        def served(model: Any, fingerprint: Any) -> str:
            return f"{model or '?'}" + (f" ({fingerprint})" if fingerprint else "")

        # Model names and fingerprints are metadata the provider reports, not content.
        was = served(before.get("previous_model"), before.get("previous_fingerprint"))
        now = served(
            event.get("gen_ai.response.model"), event.get("openai.response.system_fingerprint")
        )
        self.recorder.record(
            events.ObjectRef(api_version="v1", kind="Pod", name=pod, namespace=ns),
            type="Warning",
            reason=derive.KINDS[derive.Kind.MODEL_DRIFT].event_reason,
            message=f"route {event.get('aiguard.route') or '?'}: the served model changed from "
            f"{was} to {now} (AIPolicy {event.get(audit.POLICY_NAME)})",
        )

    # ------------------------------------------------------------------ chain gaps

    async def _check_due_gaps(self) -> None:
        now = self._clock()
        for instance in [i for i, t in self._gap_due.items() if t <= now]:
            del self._gap_due[instance]
            try:
                await self.check_gap(instance)
            except Exception:
                self._gap_due[instance] = now + max(1.0, self.settings.gap_grace_seconds)
                raise

    async def check_gap(self, instance: str) -> None:
        """Raise ``audit-delivery-failure`` incidents for the holes of one chain, each counted
        in the window of the first event after it (deterministic: a rescan finds the same)."""
        info = await self.store.chain(instance)
        if info is None:
            return
        start = info.start.sequence if info.start is not None else 1
        if not derive.chain_missing(stored=info.events, head=info.last_sequence, start=start):
            return
        sequences: list[int] = []
        after: str | None = None
        while True:
            page = await self.store.events(
                EventQuery(instance=instance, order="sequence", after=after, limit=PAGE)
            )
            sequences.extend(int(json.loads(b)[audit.SEQUENCE]) for b in page.bodies)
            if page.next is None:
                break
            after = page.next
        holes = derive.gap_holes(sequences, start=start, head=info.last_sequence)
        aggregates: dict[derive.Key, derive.Aggregate] = {}
        for first, last in holes:
            page = await self.store.events(
                EventQuery(
                    instance=instance,
                    order="sequence",
                    after=encode_cursor(instance, last),
                    limit=1,
                )
            )
            if not page.bodies:
                continue
            nxt = json.loads(page.bodies[0])
            cfg = await self.policy_incidents(info.namespace, str(nxt[audit.POLICY_NAME]))
            key = derive.key_of(nxt, derive.Kind.AUDIT_DELIVERY, cfg.config.window_seconds)
            agg = aggregates.get(key) or derive.Aggregate(key)
            ts = audit.parse_time(str(nxt[audit.TIME]))
            for _ in range(last - first + 1):
                agg.add(ts, derive.Signal(derive.Kind.AUDIT_DELIVERY, (f"seq {first}-{last}",)))
            agg.details = type(agg.details)({f"sequences {first}..{last}": last - first + 1})
            aggregates[key] = agg
        for agg in aggregates.values():
            cfg = await self.policy_incidents(agg.key.namespace, agg.key.policy)
            if derive.qualifies(agg, cfg.config.severity_threshold):
                await self.upsert(agg, cfg)

    # ------------------------------------------------------------------ policies

    async def policy_incidents(self, namespace: str, name: str) -> PolicyIncidents:
        """The policy's ``spec.incidents``, cached for ``policy_ttl`` seconds."""
        now = self._clock()
        hit = self._policies.get((namespace, name))
        if hit is not None and now - hit[0] < self.settings.policy_ttl:
            return hit[1]
        path = kube.path(
            group=API_GROUP,
            version=API_VERSION,
            plural=PLURAL_POLICY,
            namespace=namespace,
            name=name,
        )
        try:
            obj = await self.api.get_or_none(path)
        except (kube.KubeError, OSError) as e:
            if hit is not None:
                return hit[1]
            log.warning(
                "cannot read AIPolicy; incident defaults apply",
                extra={"fields": {"policy": f"{namespace}/{name}", "error": str(e)}},
            )
            return PolicyIncidents(Incidents(), found=False)
        result = PolicyIncidents(Incidents(), found=obj is not None)
        if obj is not None:
            try:
                result = PolicyIncidents(
                    Incidents.model_validate((obj.get("spec") or {}).get("incidents") or {}),
                    found=True,
                )
            except pydantic.ValidationError:
                log.warning(
                    "AIPolicy spec.incidents is invalid; incident defaults apply",
                    extra={"fields": {"policy": f"{namespace}/{name}"}},
                )
        self._policies[(namespace, name)] = (now, result)
        return result

    # ------------------------------------------------------------------ notifications

    def notify_soon(self, namespace: str, name: str) -> None:
        """Queue the notification of an AIIncident created elsewhere (a human-review approval
        request): sent like any incident's, once. Never blocks."""
        self._queue_notification(namespace, name)

    def _queue_notification(self, namespace: str, name: str) -> None:
        if (namespace, name) in self._notifying:
            return
        try:
            self._notify_queue.put_nowait((namespace, name))
            self._notifying.add((namespace, name))
        except asyncio.QueueFull:
            log.warning(
                "notification queue full; the incident is notified on its next update",
                extra={"fields": {"incident": f"{namespace}/{name}"}},
            )

    async def _notifier(self) -> None:
        while True:
            namespace, name = await self._notify_queue.get()
            try:
                await self.notify(namespace, name)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning(
                    "incident notification failed",
                    extra={"fields": {"incident": f"{namespace}/{name}", "error": str(e)}},
                )
            finally:
                self._notifying.discard((namespace, name))

    async def notify(self, namespace: str, name: str) -> bool:
        """Send the incident to its policy's webhook and mark ``status.notified``.
        False: nothing to send (no webhook, already notified)."""
        obj = await self.api.get_or_none(incident_path(namespace, name))
        if obj is None or (obj.get("status") or {}).get("notified"):
            return False
        incident = notify.Incident.from_object(obj)
        cfg = await self.policy_incidents(namespace, incident.policy)
        target = cfg.config.notify
        if target is None:
            return False
        ref = target.webhook_secret_ref
        secret = await self.api.get(kube.path(plural="secrets", namespace=namespace, name=ref.name))
        raw = (secret.get("data") or {}).get(ref.key)
        if not raw:
            raise notify.DeliveryFailed(f"Secret {namespace}/{ref.name} has no key {ref.key!r}")
        url = base64.b64decode(raw).decode().strip()
        call_url, payload = notify.request(target.format, url, incident)
        assert self._session is not None
        attempts = await notify.deliver(
            self._session,
            call_url,
            payload,
            attempts=self.settings.notify_attempts,
            backoff=self.settings.notify_backoff,
            attempt_timeout=self.settings.notify_timeout,
            what=f"{namespace}/{name}",
        )
        await self.api.patch(
            incident_path(namespace, name, status=True), {"status": {"notified": True}}
        )
        log.info(
            "incident notified",
            extra={
                "fields": {
                    "incident": f"{namespace}/{name}",
                    "format": target.format,
                    "attempts": attempts,
                }
            },
        )
        return True


def _signalling(bodies: list[str]) -> list[str]:
    return [b for b in bodies if may_signal(b)]


def _ingests(bodies: list[str]) -> list[Ingest]:
    return [_ingest_of(b) for b in bodies]


def _ingest_of(body: str) -> Ingest:
    event = json.loads(body)
    return Ingest(
        id=str(event[audit.ID]),
        instance=str(event[audit.INSTANCE]),
        sequence=int(event[audit.SEQUENCE]),
        time_us=round(audit.parse_time(str(event[audit.TIME])) * 1e6),
        namespace=str(event[audit.NAMESPACE]),
        pod=str(event[audit.POD]),
        service_account=str(event.get(audit.SERVICE_ACCOUNT, "")),
        policy=str(event[audit.POLICY_NAME]),
        hash=str(event[audit.HASH]),
        body=body,
    )


__all__ = ["IncidentManager", "IncidentSettings", "manifest", "settings_from_env"]
