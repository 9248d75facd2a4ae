"""Kubernetes Events from the operator, aggregated: a 100-replica rollout makes one Event.

Admission sees every pod of a rollout, one request each; an Event per pod would bury the one
line a person needs in ``kubectl describe replicaset``. Like client-go's EventCorrelator,
occurrences with the same object, type and reason form one *series*, written as one core/v1
Event whose ``count`` and ``lastTimestamp`` grow::

    recorder.record(ref, type="Warning", reason="AnnotatedPolicyMissing", message="...")
        # cheap and synchronous: safe on the admission path, no I/O
    await recorder.run(api)
        # background task: a new series is created at once; repeats are written as one
        # count update per series at most every ``interval`` seconds

The message of a series is its latest occurrence's. A series not seen for ``expire`` seconds
is forgotten; the next occurrence starts a new Event. Event names carry a per-process token,
so a restarted operator never collides with the Events of its predecessor (they expire by the
API server's TTL). Needs RBAC ``events: create, patch``.

This module does not import kopf: kopf's own ``kopf.event()`` posts one Event per call and
only inside a handler of a watched object, not in admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiguard_operator import kube, metrics

logger = logging.getLogger("aiguard.operator.events")

EventType = Literal["Normal", "Warning"]
MAX_MESSAGE: Final = 1024
"""Longer messages are cut (events.k8s.io limits a note to 1 kB; core/v1 is as readable)."""
MAX_ATTEMPTS: Final = 3
"""A series whose write failed this many times in a row is dropped (and logged)."""


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about (``involvedObject``)."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str | None = None
    """Unknown for a pod being created: admission runs before the pod has one."""

    def as_involved_object(self) -> dict[str, str]:
        out = {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
        }
        if self.uid:
            out["uid"] = self.uid
        return out


SeriesKey = tuple[str, str, str, str, str, str]


@dataclass
class Series:
    """One aggregated Event: the same object, type and reason, counted."""

    ref: ObjectRef
    type: EventType
    reason: str
    message: str
    name: str
    """The Event object's name."""
    count: int
    first: float
    last: float
    written: int = 0
    """``count`` as last written; 0: the Event is not created yet."""
    written_at: float = 0.0
    failures: int = 0


def _timestamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Recorder:
    """Aggregates occurrences in memory and writes them as core/v1 Events."""

    def __init__(
        self,
        *,
        component: str,
        instance: str,
        interval: float = 5.0,
        expire: float = 600.0,
        max_series: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.component = component
        self.instance = instance
        self.interval = interval
        """Seconds between two writes of one series (a new series is written at once)."""
        self.expire = expire
        """Seconds after its last occurrence a written series is forgotten."""
        self.max_series = max_series
        """Series kept at most; beyond, the oldest written ones are forgotten first."""
        self._clock = clock
        self._token = secrets.token_hex(3)
        self._series: dict[SeriesKey, Series] = {}
        self._wakeup = asyncio.Event()

    # ---------------------------------------------------------------- recording (sync)

    def record(self, ref: ObjectRef, *, type: EventType, reason: str, message: str) -> None:
        """Count one occurrence. Never blocks, never raises for a full table."""
        now = self._clock()
        key: SeriesKey = (ref.namespace, ref.kind, ref.name, ref.uid or "", type, reason)
        message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"
        series = self._series.get(key)
        if series is not None and now - series.last > self.expire:
            del self._series[key]
            series = None
        if series is None:
            if len(self._series) >= self.max_series and not self._evict():
                metrics.EVENTS.labels("dropped").inc()
                return
            digest = hashlib.sha256(f"{key}|{self._token}|{now}".encode()).hexdigest()[:16]
            series = Series(
                ref=ref,
                type=type,
                reason=reason,
                message=message,
                name=f"{ref.name[:200]}.{digest}",
                count=0,
                first=now,
                last=now,
            )
            self._series[key] = series
            self._wakeup.set()  # a new series is written at once
        series.count += 1
        series.last = now
        series.message = message

    def _evict(self) -> bool:
        """Forget the written series seen longest ago; False when every series is unwritten."""
        written = [(s.last, k) for k, s in self._series.items() if s.written == s.count]
        if not written:
            return False
        del self._series[min(written)[1]]
        return True

    def series(self) -> list[Series]:
        """Every series kept now (for tests and debugging)."""
        return list(self._series.values())

    # ---------------------------------------------------------------- writing (async)

    def due(self) -> list[Series]:
        """Series to write now: new ones, and changed ones not written for ``interval``."""
        now = self._clock()
        for key in [k for k, s in self._series.items() if now - s.last > self.expire]:
            if self._series[key].written == self._series[key].count:
                del self._series[key]
        return [
            s
            for s in self._series.values()
            if s.written == 0 or (s.count != s.written and now - s.written_at >= self.interval)
        ]

    def manifest(self, series: Series) -> dict[str, Any]:
        """The Event to create for ``series``."""
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": series.name, "namespace": series.ref.namespace},
            "involvedObject": series.ref.as_involved_object(),
            "type": series.type,
            "reason": series.reason,
            "message": series.message,
            "count": series.count,
            "firstTimestamp": _timestamp(series.first),
            "lastTimestamp": _timestamp(series.last),
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }

    def update(self, series: Series) -> dict[str, Any]:
        """The merge patch that brings the Event up to ``series``."""
        return {
            "count": series.count,
            "lastTimestamp": _timestamp(series.last),
            "message": series.message,
        }

    async def _write(self, api: kube.Client, series: Series) -> None:
        path = kube.path(plural="events", namespace=series.ref.namespace)
        count = series.count
        if series.written:
            try:
                await api.patch(f"{path}/{series.name}", self.update(series))
                outcome = "updated"
            except kube.NotFound:  # expired by the API server's event TTL: start again
                series.name = f"{series.name.rsplit('.', 1)[0]}.{secrets.token_hex(8)}"
                await api.create(path, self.manifest(series))
                outcome = "created"
        else:
            try:
                await api.create(path, self.manifest(series))
                outcome = "created"
            except kube.ApiError as e:
                if e.status != 409:
                    raise
                await api.patch(f"{path}/{series.name}", self.update(series))
                outcome = "updated"
        series.written = count
        series.written_at = self._clock()
        series.failures = 0
        metrics.EVENTS.labels(outcome).inc()

    async def flush(self, api: kube.Client) -> None:
        """Write every due series; a failing one is retried on the next flush."""
        for series in self.due():
            try:
                await self._write(api, series)
            except (TimeoutError, kube.KubeError, OSError) as e:
                metrics.EVENTS.labels("failed").inc()
                series.failures += 1
                series.written_at = self._clock()
                if series.failures >= MAX_ATTEMPTS:
                    logger.warning(
                        "dropping Event %s %s on %s %s/%s after %d failed writes: %s",
                        series.type,
                        series.reason,
                        series.ref.kind,
                        series.ref.namespace,
                        series.ref.name,
                        series.failures,
                        e,
                    )
                    series.written = series.count
                    series.failures = 0

    async def run(self, api: kube.Client) -> None:
        """Write series as they become due, until cancelled (then a last flush)."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self.interval)
                self._wakeup.clear()
                await self.flush(api)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush(api))
