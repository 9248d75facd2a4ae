"""A copy of the audit events as OpenTelemetry logs (OTLP/HTTP, JSON encoding).

``spec.audit.sinks.otlpEndpoint: http://otel-collector.observability:4318`` sends every
committed event to ``{endpoint}/v1/logs`` as one log record, so a platform's existing log
pipeline (an OpenTelemetry Collector, then Loki, Elastic, a SIEM…) receives them too::

    resource   k8s.namespace.name, k8s.pod.name, service.name=aiguard-sidecar,
               service.instance.id (the audit chain's instance)
    scope      aiguard.audit (the package version)
    record     timeUnixNano = the event's time; eventName aiguard.audit;
               severity INFO (ok) / WARN (refused or failed);
               body = the event's canonical JSON line, byte for byte, so a receiver can
               re-verify its hash and chain; attributes = the event's keys with typed values

This is a copy, not the evidence path: the collector's spool-and-ship path is the durable,
exactly-counted one. The exporter keeps a bounded queue (``MAX_QUEUE`` events), sends batches
of up to ``MAX_BATCH`` once a second or sooner when full, retries 429/5xx/connection errors
with exponential backoff (``Retry-After`` honoured) and drops the oldest events when the queue
overflows or a batch is refused for good (4xx), counting every one
(``aiguard_audit_otlp_dropped_total``) — an OTLP outage never holds up requests or the spool.
TLS is verified (a custom CA via ``ca_file``); no credentials are sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp

from aiguard_api import __version__, audit

log = logging.getLogger("aiguard.audit.otlp")

LOGS_PATH: Final = "/v1/logs"
MAX_QUEUE: Final = 10_000
MAX_BATCH: Final = 512
FLUSH_SECONDS: Final = 1.0
BACKOFF_BASE: Final = 0.5
BACKOFF_MAX: Final = 30.0
TIMEOUT_SECONDS: Final = 10.0
SEVERITY_INFO: Final = 9
SEVERITY_WARN: Final = 13
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- the wire format


def any_value(value: Any) -> dict[str, Any]:
    """An OTLP ``AnyValue`` (JSON encoding: int64 as a string, as protobuf's JSON mapping)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": attributes(value)}}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def attributes(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``KeyValue`` list; null values are left out (OTLP has no null)."""
    return [{"key": k, "value": any_value(v)} for k, v in values.items() if v is not None]


def log_record(line: bytes) -> tuple[tuple[str, str, str], dict[str, Any]]:
    """((namespace, pod, instance), LogRecord) of one canonical event line."""
    event: dict[str, Any] = json.loads(line)
    when = dt.datetime.fromisoformat(str(event[audit.TIME]).replace("Z", "+00:00"))
    nanos = (when - EPOCH) // dt.timedelta(microseconds=1) * 1000
    refused = event.get("aiguard.outcome") not in (None, "ok")
    record = {
        "timeUnixNano": str(nanos),
        "observedTimeUnixNano": str(nanos),
        "severityNumber": SEVERITY_WARN if refused else SEVERITY_INFO,
        "severityText": "WARN" if refused else "INFO",
        "eventName": "aiguard.audit",
        "body": {"stringValue": line.decode().rstrip("\n")},
        "attributes": attributes(event),
    }
    key = (
        str(event.get(audit.NAMESPACE, "")),
        str(event.get(audit.POD, "")),
        str(event.get(audit.INSTANCE, "")),
    )
    return key, record


def export_request(lines: Sequence[bytes]) -> dict[str, Any]:
    """An ``ExportLogsServiceRequest`` (JSON) for ``lines``, one resource per chain."""
    by_resource: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for line in lines:
        key, record = log_record(line)
        by_resource.setdefault(key, []).append(record)
    return {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": attributes(
                        {
                            audit.NAMESPACE: ns,
                            audit.POD: pod,
                            "service.name": "aiguard-sidecar",
                            "service.version": __version__,
                            "service.instance.id": instance,
                        }
                    )
                },
                "scopeLogs": [
                    {
                        "scope": {"name": "aiguard.audit", "version": __version__},
                        "logRecords": records,
                    }
                ],
            }
            for (ns, pod, instance), records in by_resource.items()
        ]
    }


# --------------------------------------------------------------------------- the exporter


class OtlpExporter:
    """Batches committed event lines to one OTLP/HTTP endpoint (see the module docstring).

    :meth:`put` may be called from any thread (the spool's writer calls it after a commit);
    everything else runs on the event loop given to :meth:`start`.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        on_exported: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        ca_file: Path | None = None,
        max_queue: int = MAX_QUEUE,
        max_batch: int = MAX_BATCH,
        flush_seconds: float = FLUSH_SECONDS,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"OTLP endpoint {endpoint!r} is not http(s)://")
        self.endpoint = endpoint.rstrip("/")
        self.url = self.endpoint + LOGS_PATH
        self._on_exported = on_exported or (lambda n: None)
        self._on_dropped = on_dropped or (lambda n: None)
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        )
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.flush_seconds = flush_seconds
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._queue: collections.deque[bytes] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight = 0
        self.exported = 0
        self.dropped = 0

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task = self._loop.create_task(self._run(), name="audit-otlp")

    def put(self, lines: Sequence[bytes]) -> None:
        """Queue committed event lines (thread-safe, never blocks)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._drop(len(lines))
            return
        batch = list(lines)
        try:
            loop.call_soon_threadsafe(self._enqueue, batch)
        except RuntimeError:  # the loop closed meanwhile
            self._drop(len(batch))

    def _enqueue(self, lines: list[bytes]) -> None:
        self._queue.extend(lines)
        if self._drained is not None:
            self._drained.clear()
        over = len(self._queue) - self.max_queue
        if over > 0:
            for _ in range(over):
                self._queue.popleft()
            self._drop(over)
        if self._wake is not None and len(self._queue) >= self.max_batch:
            self._wake.set()

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._on_dropped(count)

    async def _run(self) -> None:
        assert self._wake is not None
        assert self._drained is not None
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            while True:
                if not self._queue:
                    self._drained.set()
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
                if self._queue:
                    await self._send_next()
        finally:
            await self._session.close()

    async def _send_next(self) -> None:
        # Taken off the queue first: an overflow while this batch is retried drops queued
        # events, never the ones in flight.
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        self._inflight = len(batch)
        body = json.dumps(export_request(batch), separators=(",", ":")).encode()
        delay = self.backoff_base
        while True:
            retry_after = await self._post(body, len(batch))
            if retry_after is None:  # delivered, or refused for good (counted either way)
                break
            await asyncio.sleep(retry_after if retry_after > 0 else delay)
            delay = min(delay * 2, self.backoff_max)
        # Not in a ``finally``: a batch cancelled in flight stays counted for :meth:`close`.
        self._inflight = 0

    async def _post(self, body: bytes, count: int) -> float | None:
        """None when done with the batch; else seconds to wait (0: use the backoff)."""
        assert self._session is not None
        try:
            async with self._session.post(
                self.url,
                data=body,
                headers={"Content-Type": "application/json"},
                ssl=self._ssl,
            ) as resp:
                text = await resp.text()
                if resp.status < 300:
                    self.exported += count
                    self._on_exported(count)
                    return None
                if resp.status == 429 or resp.status >= 500:
                    log.warning("OTLP endpoint answered %s; retrying", resp.status)
                    return _retry_after(resp.headers.get("Retry-After"))
                log.error(
                    "OTLP endpoint refused a batch for good (%s: %s); %d events dropped",
                    resp.status,
                    text[:200],
                    count,
                )
                self._drop(count)
                return None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("OTLP endpoint %s unreachable (%s); retrying", self.endpoint, e)
            return 0.0

    async def close(self, flush_seconds: float = 2.0) -> None:
        """Try to send what is queued within ``flush_seconds``, then stop; the rest is
        counted as dropped."""
        if self._task is None:
            return
        if self._wake is not None and self._drained is not None:
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), flush_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self.pending():
            self._drop(self.pending())
            self._queue.clear()
            self._inflight = 0

    def pending(self) -> int:
        """Events queued or in flight."""
        return len(self._queue) + self._inflight


def _retry_after(value: str | None) -> float:
    if value and value.strip().isdigit():
        return min(float(value.strip()), BACKOFF_MAX)
    return 0.0
