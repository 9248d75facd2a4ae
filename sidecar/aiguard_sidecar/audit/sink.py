"""The sidecar's :class:`~aiguard_sidecar.records.AuditSink`: spool, ship, copy to stdout.

Which sinks an event goes to is read from the policy in force at each request
(``spec.audit.sinks``), so a policy reload switches them without a restart:

=========================  =================================================================
``sinks.collector: true``  spooled durably (``spool.py``) before the response completes, then
and a collector URL        shipped (``shipper.py``). Without a URL (``--collector-url`` /
                           ``AIGUARD_COLLECTOR_URL``) nothing is spooled: a spool nobody
                           drains would only fill the volume (a warning says so at start).
``sinks.stdout: true``     a copy of each event as one JSON line on stdout, written by its
                           own thread (a slow stdout pipe never stalls requests). Without
                           the collector the events are still chained, in memory.
no collector URL           one metadata line per request on stderr (:class:`RequestLog`,
(``request_log`` unset)    logger name ``aiguard.requests``, the JSON log line shape),
                           serialised and written in batches by its own thread. With a
                           collector the spool is the audit path and the line is off unless
                           ``AuditSettings.request_log`` turns it on; ``--log-level
                           warning`` turns it off either way.
=========================  =================================================================

Why the line is not a ``logging`` call: per request, ``LogRecord`` construction, the queue
handler's copy and the ``json`` formatter cost more CPU than the whole policy path (profiled:
12-18 % of a request). :class:`RequestLog` puts the record's metadata on a queue (one call on
the event loop) and its thread writes each batch with ``orjson`` in one ``write``.

When the spool cannot take an event, :meth:`AuditService.emit` counts it
(``aiguard_audit_spool_write_failures_total``; under ``onSpoolFailure: open`` also
``aiguard_audit_events_dropped_total``, because that request is served without evidence) and
raises :class:`~aiguard_sidecar.records.AuditUnavailable`: the pipeline then refuses the
request (closed) or serves it (open).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from aiguard_api import audit, constants
from aiguard_api.policy_types import FailureMode
from aiguard_api.view import SidecarConfig
from aiguard_sidecar.audit import events
from aiguard_sidecar.audit.otlp import OtlpExporter
from aiguard_sidecar.audit.shipper import Shipper
from aiguard_sidecar.audit.spool import (
    DEFAULT_MAX_BYTES,
    DEFAULT_SEGMENT_BYTES,
    Spool,
    SpoolIO,
    SpoolUnavailable,
)
from aiguard_sidecar.identity import Workload
from aiguard_sidecar.metrics import Metrics
from aiguard_sidecar.records import AuditUnavailable, RequestRecord
from aiguard_sidecar.upstream import SecretFiles

log = logging.getLogger("aiguard.sidecar.audit")

STDOUT_QUEUE: Final = 10_000
"""Lines the stdout copy may fall behind before it skips (the copy is not the evidence)."""
REQUEST_LOG_QUEUE: Final = 10_000
"""Request lines the stderr writer may fall behind before it skips (nor are they evidence)."""
REQUEST_LOGGER: Final = "aiguard.requests"
KEY_WARN_SECONDS: Final = 60.0


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Process settings of the audit path (``main.py`` reads them from flags/environment)."""

    collector_url: str | None = None
    """``https://aiguard-collector.aiguard-system.svc:15093``; None: no spool, no shipping."""
    spool_dir: Path = Path(constants.SIDECAR_SPOOL_DIR)
    token_file: Path | None = Path(audit.COLLECTOR_TOKEN_FILE)
    """The projected ServiceAccount token presented to the collector."""
    ca_file: Path | None = None
    """CA bundle that signed the collector's certificate (None: the system's)."""
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    max_bytes: int = DEFAULT_MAX_BYTES
    """Spool size limit: beyond it appends fail (onSpoolFailure decides)."""
    batch_events: int = 500
    backoff_base: float = 0.2
    """Seconds before the first retry of a failed delivery (doubles, full jitter)."""
    backoff_max: float = 30.0
    flush_seconds: float = 5.0
    """On shutdown: how long to try delivering what is pending (the rest waits in the
    spool for the next start)."""
    fsync: bool = True
    """Off only in benchmarks that measure everything but the disk."""
    request_log: bool | None = None
    """One metadata line per request on stderr (:class:`RequestLog`). None: only when there
    is no collector URL (then it is the only per-request trace outside the process)."""
    io: SpoolIO | None = field(default=None, compare=False)
    """File operations of the spool (tests inject failures)."""


class StdoutCopy:
    """Writes event lines to a binary stream from its own thread."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._queue: queue.Queue[Sequence[bytes] | None] = queue.Queue(STDOUT_QUEUE)
        self._thread = threading.Thread(target=self._run, name="aiguard-audit-stdout", daemon=True)
        self._thread.start()
        self.skipped = 0

    def put(self, lines: Sequence[bytes]) -> None:
        try:
            self._queue.put_nowait(lines)
        except queue.Full:
            self.skipped += len(lines)

    def _run(self) -> None:
        while (lines := self._queue.get()) is not None:
            try:
                self._stream.write(b"".join(lines))
                self._stream.flush()
            except (OSError, ValueError):
                self.skipped += len(lines)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


# How long the request-log writer lets lines gather before it formats and writes them.
REQUEST_LOG_BATCH_SECONDS: Final = 0.02


class RequestLog:
    """One JSON line of request metadata (``RequestRecord.summary()``) per request on a binary
    stream, in the shape of ``logs.JsonFormatter`` lines (``ts``, ``level``, ``logger``,
    ``msg: "request"`` and the fields). The event loop only enqueues the summary; a thread
    serialises whatever has queued up and writes it in one call."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="aiguard-request-log", daemon=True)
        self._thread.start()
        self.skipped = 0
        self._second = -1
        self._stamp = ""

    def put(self, record: RequestRecord) -> None:
        if self._queue.qsize() >= REQUEST_LOG_QUEUE:
            self.skipped += 1
            return
        self._queue.put(record.summary())

    def _ts(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def _line(self, fields: dict[str, Any]) -> bytes:
        head = {
            "ts": self._ts(time.time()),
            "level": "info",
            "logger": REQUEST_LOGGER,
            "msg": "request",
        }
        return orjson.dumps({**head, **fields}, default=str) + b"\n"

    def _run(self) -> None:
        q = self._queue
        while True:
            first = q.get()
            if first is None:
                return
            # Let a batch gather: one wake-up (and GIL hand-off) per batch, not per request;
            # a log line may be this late, a request never waits for it.
            time.sleep(REQUEST_LOG_BATCH_SECONDS)
            lines = [self._line(first)]
            stop = False
            while len(lines) < 512:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                lines.append(self._line(nxt))
            try:
                stream = self._stream or sys.stderr.buffer
                stream.write(b"".join(lines))
                stream.flush()
            except (OSError, ValueError, AttributeError):
                self.skipped += len(lines)
            if stop:
                return

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


class AuditService:
    """The AuditSink of ``app.py`` (see the module docstring)."""

    def __init__(
        self,
        settings: AuditSettings,
        *,
        workload: Workload,
        metrics: Metrics,
        config: Callable[[], SidecarConfig | None],
        secrets: SecretFiles | None = None,
        stdout: BinaryIO | None = None,
        request_log_stream: BinaryIO | None = None,
    ) -> None:
        self.settings = settings
        self.workload = workload
        self.metrics = metrics
        self._config = config
        self._secrets = secrets
        self._stdout_stream = stdout
        self._stdout: StdoutCopy | None = None
        self._otlp: OtlpExporter | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        wanted = settings.request_log
        if wanted is None:
            wanted = not settings.collector_url
        self._request_log = RequestLog(request_log_stream) if wanted else None
        self._request_logger = logging.getLogger(REQUEST_LOGGER)
        self.spool: Spool | None = None
        self.shipper: Shipper | None = None
        self._memory: Spool | None = None
        self._task: asyncio.Task[None] | None = None
        self._broken: str | None = None
        self._closed = False
        self._key_warned = 0.0

    # ── lifecycle ────────────────────────────────────────────────────────────────────────────

    async def start(self) -> None:
        s = self.settings
        m = self.metrics
        self._loop = asyncio.get_running_loop()
        m.audit_spool_depth.set_function(lambda: self.spool.depth() if self.spool else 0)
        m.audit_spool_bytes.set_function(lambda: self.spool.bytes() if self.spool else 0)
        m.audit_delivery_lag.set_function(lambda: self.spool.lag() if self.spool else 0.0)
        if not s.collector_url:
            log.warning(
                "no collector URL (--collector-url / AIGUARD_COLLECTOR_URL): audit events are "
                "not spooled or shipped; only logged (and copied to stdout if the policy says)"
            )
            return
        loop = asyncio.get_running_loop()
        spool = Spool(
            s.spool_dir,
            namespace=self.workload.namespace,
            pod=self.workload.pod,
            segment_bytes=s.segment_bytes,
            max_bytes=s.max_bytes,
            fsync=s.fsync,
            io=s.io,
            on_commit=self._copy,
        )
        try:
            await asyncio.to_thread(spool.open)
        except (OSError, SpoolUnavailable, ValueError, KeyError) as e:
            self._broken = f"the audit spool {s.spool_dir} cannot be opened: {e}"
            log.error(self._broken)
            return
        spool.start(loop)
        self.spool = spool
        self.shipper = Shipper(
            spool,
            url=s.collector_url,
            metrics=m,
            token_file=s.token_file,
            ca_file=s.ca_file,
            batch_events=s.batch_events,
            backoff_base=s.backoff_base,
            backoff_max=s.backoff_max,
        )
        self._task = asyncio.create_task(self.shipper.run(), name="audit-shipper")

    async def close(self) -> None:
        """Stop shipping (after a bounded last attempt), finish the writer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.spool is not None and self.shipper is not None:
            await asyncio.to_thread(self.spool.stop)
            if self.spool.depth() > 0 and not await self.shipper.flush(self.settings.flush_seconds):
                log.warning(
                    "audit events left in the spool; they are shipped after the next start",
                    extra={"fields": {"pending": self.spool.depth()}},
                )
        if self.shipper is not None:
            await self.shipper.close()
        if self._memory is not None:
            await asyncio.to_thread(self._memory.stop)
        if self._stdout is not None:
            await asyncio.to_thread(self._stdout.close)
        if self._otlp is not None:
            await self._otlp.close()
        if self._request_log is not None:
            await asyncio.to_thread(self._request_log.close)

    # ── the sink ─────────────────────────────────────────────────────────────────────────────

    def begin(self, record: RequestRecord) -> None:
        """A stream started: journal its event so far, so that a process killed before the
        stream ends still leaves an ``interrupted`` event (``Spool.mark``). Never blocks."""
        spool = self.spool
        cfg = self._config()
        if spool is None or (cfg is not None and not cfg.spec.audit.sinks.collector):
            return
        d = events.draft(record, cfg=cfg, key=None)
        self._hash_key(cfg, d)
        spool.mark(d)

    async def emit(self, record: RequestRecord) -> None:
        if self._request_log is not None and self._request_logger.isEnabledFor(logging.INFO):
            self._request_log.put(record)
        cfg = self._config()
        spec = cfg.spec.audit if cfg is not None else None
        to_collector = bool(self.settings.collector_url) and (spec is None or spec.sinks.collector)
        to_stdout = spec is not None and spec.sinks.stdout
        to_otlp = spec is not None and bool(spec.sinks.otlp_endpoint)
        if not to_collector and not to_stdout and not to_otlp:
            return
        spool = self.spool if to_collector else await self._memory_spool()
        try:
            if spool is None:
                raise SpoolUnavailable(self._broken or "the audit spool is not running")
            d = events.draft(record, cfg=cfg, key=None)
            self._hash_key(cfg, d)
            await spool.append(d)
        except SpoolUnavailable as e:
            self.metrics.audit_spool_write_failures.inc()
            if spec is not None and spec.on_spool_failure is FailureMode.OPEN:
                self.metrics.audit_events_dropped.inc()
            raise AuditUnavailable(str(e)) from e
        self.metrics.audit_events.inc()

    def _hash_key(self, cfg: SidecarConfig | None, d: events.Draft) -> None:
        """Key the content hashes with ``audit.hashKeySecretRef``; when the policy names a key
        that is not mounted, withhold the hashes (plain ones would defeat the key's purpose)."""
        ref = cfg.spec.audit.hash_key_secret_ref if cfg is not None else None
        if ref is None or cfg is None:
            return
        data = self._secrets.get(cfg.secret_path(ref.name, ref.key)) if self._secrets else None
        key = data.strip() if data else None
        if key:
            d.key = key
            d.attributes["aiguard.hash.key_id"] = audit.key_id(key)
            return
        d.inputs = d.outputs = None
        now = time.monotonic()
        if now - self._key_warned > KEY_WARN_SECONDS:
            self._key_warned = now
            log.warning(
                "audit.hashKeySecretRef is not mounted: content hashes are withheld",
                extra={"fields": {"secret": ref.name, "key": ref.key}},
            )

    async def _memory_spool(self) -> Spool:
        if self._memory is None:
            memory = Spool(
                None,
                namespace=self.workload.namespace,
                pod=self.workload.pod,
                on_commit=self._copy,
            )
            memory.open()
            memory.start(asyncio.get_running_loop())
            self._memory = memory
        return self._memory

    def _copy(self, lines: Sequence[bytes]) -> None:
        """Writer thread, after a commit: the stdout and OTLP copies the policy asks for.
        Copies never carry captured content (``aiguard.capture``): it goes to the collector
        alone, to be stored encrypted; a copy's line still verifies (the capture is outside
        the hash)."""
        cfg = self._config()
        if cfg is None:
            return
        sinks = cfg.spec.audit.sinks
        if not sinks.stdout and not sinks.otlp_endpoint:
            return
        copies = [_without_capture(line) for line in lines]
        if sinks.stdout:
            if self._stdout is None:
                self._stdout = StdoutCopy(self._stdout_stream or sys.stdout.buffer)
            self._stdout.put(copies)
        loop = self._loop
        if sinks.otlp_endpoint and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._to_otlp, sinks.otlp_endpoint, copies)

    def _to_otlp(self, endpoint: str, lines: list[bytes]) -> None:
        """On the loop: hand ``lines`` to the exporter of ``endpoint`` (a policy reload that
        changes the endpoint replaces the exporter; the old one flushes and stops)."""
        if self._closed:
            self.metrics.audit_otlp_dropped.inc(len(lines))
            return
        current = self._otlp
        if current is None or current.endpoint != endpoint.rstrip("/"):
            if current is not None:
                old = current
                task = asyncio.get_running_loop().create_task(old.close())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            try:
                current = OtlpExporter(
                    endpoint,
                    on_exported=self.metrics.audit_otlp_exported.inc,
                    on_dropped=self.metrics.audit_otlp_dropped.inc,
                )
            except ValueError as e:
                log.error("audit OTLP copy disabled: %s", e)
                self.metrics.audit_otlp_dropped.inc(len(lines))
                return
            current.start()
            self._otlp = current
        current.put(lines)


def _without_capture(line: bytes) -> bytes:
    """``line`` without its ``aiguard.capture`` (re-encoded canonically), else unchanged."""
    if b'"aiguard.capture":' not in line:
        return line
    event = json.loads(line)
    event.pop(audit.CAPTURE, None)
    return audit.canonical(event) + b"\n"
