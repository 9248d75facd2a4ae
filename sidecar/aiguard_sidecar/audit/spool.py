"""The durable, append-only audit spool on the sidecar's volume.

Layout of the spool directory (``/var/lib/aiguard/spool``, an emptyDir that survives container
restarts)::

    instance.json                    {"namespace", "pod", "boot_id"}: this pod's chain id
    cursor.json                      {"sequence", "hash"}: acknowledged by the collector
    00000000000000000001.jsonl       segment: canonical JSON lines, named by first sequence
    00000000000000004711.jsonl       the active segment (the newest)
    inflight/<sha256 of request id>  a stream in progress (see "In flight" below)

Writing. :meth:`Spool.append` is awaited by each request before its response completes. It
hands the draft to one writer thread and waits; the thread takes every draft queued by then
(group commit), seals them into the chain in queue order, writes them with one ``write`` and
one ``fsync``, and then resolves their futures. While one ``fsync`` runs, new requests queue,
and the next batch commits them all at once: throughput scales with concurrency, and the
event loop never waits on the disk. A failed write or ``fsync`` (disk full, I/O error) fails
the whole batch with :class:`SpoolUnavailable`, truncates what it may have written, and
leaves the chain where it was (no sequence is spent on an event that is not on disk).
A segment is closed and a new one begun once it exceeds ``segment_bytes``.

Recovery (:meth:`Spool.open`, on startup, off the loop). The chain continues from the last
complete line on disk (or the cursor, when every segment had been delivered and deleted).
A torn last line — the process died inside ``write`` — is cut off: its request never got a
response, since its future resolves only after ``fsync``. Events that were on disk but not
acknowledged are shipped, so requests in flight at a crash are not lost.

In flight. A streamed response can run for minutes, and its event is sealed when it ends. So
that a process killed mid-stream (SIGKILL, OOM kill, crash) still leaves evidence, the pipeline
calls :meth:`Spool.mark` when a stream starts: the writer thread stores the event as it stands
then (metadata and the input hash; never content) in ``inflight/``, and deletes it once the
final event is committed. :meth:`Spool.open` turns every marker left behind into an event with
outcome ``interrupted`` before anything else is appended. Markers are written without
``fsync``: they survive the death of the process (the page cache outlives it), not of the node.
Marking costs the event loop one queue put; the request never waits for it.

Reading (the shipper). :meth:`read_batch` returns whole committed lines after the cursor;
:meth:`ack` moves the durable cursor (write, ``fsync``, rename) and deletes segments all of
whose events are acknowledged.

Without a directory (``directory=None``) the spool keeps the chain in memory only: the
stdout-only sink uses it so its events are chained too, without durability.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiguard_api import audit
from aiguard_sidecar.audit.events import Draft, Link, seal

log = logging.getLogger("aiguard.sidecar.audit")

SEGMENT_SUFFIX: Final = ".jsonl"
INSTANCE_FILE: Final = "instance.json"
CURSOR_FILE: Final = "cursor.json"
DEFAULT_SEGMENT_BYTES: Final = 8 << 20
DEFAULT_MAX_BYTES: Final = 768 << 20
"""Below the injected emptyDir's default sizeLimit (1Gi): the kubelet evicts a pod whose
emptyDir grows past its limit, which would lose the whole spool."""
MAX_GROUP: Final = 4096
"""Most events one group commit writes."""
INFLIGHT_DIR: Final = "inflight"
INTERRUPTED: Final = "interrupted"
"""``aiguard.outcome`` of a request whose process died before its response completed."""
REQUEST_ID: Final = "aiguard.request.id"


class SpoolUnavailable(Exception):
    """The event could not be made durable (the message says why)."""


class SpoolIO:
    """The file operations the writer uses; tests inject failing ones (a full disk)."""

    def open(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)


@dataclass(slots=True)
class SegmentInfo:
    path: Path
    first: int
    """Sequence of its first event."""
    last: int
    """Sequence of its last committed event (first - 1 while empty)."""
    size: int
    """Committed bytes: readers never look past this."""


@dataclass(slots=True)
class Batch:
    """Committed lines after the cursor, as the shipper sends them."""

    lines: list[bytes]
    first_sequence: int
    last_sequence: int
    last_hash: str
    end: tuple[int, int]
    """(segment first sequence, byte offset) just after the last line."""


@dataclass(slots=True)
class _Job:
    draft: Draft
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[dict[str, Any]]


@dataclass(slots=True)
class _Mark:
    """A stream started: journal its event as it stands (``inflight/``)."""

    draft: Draft


@dataclass(slots=True)
class _Recovered:
    link: Link = field(default_factory=Link)
    acked: Link = field(default_factory=Link)
    truncated: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def _segment_name(first: int) -> str:
    return f"{first:020d}{SEGMENT_SUFFIX}"


class Spool:
    """See the module docstring. Thread-safety: ``append`` from the event loop; the reading
    methods from one shipper (through ``asyncio.to_thread``); gauges from any thread."""

    def __init__(
        self,
        directory: Path | None,
        *,
        namespace: str,
        pod: str,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        fsync: bool = True,
        io: SpoolIO | None = None,
        on_commit: Callable[[Sequence[bytes]], None] | None = None,
    ) -> None:
        self.directory = directory
        self.namespace = namespace
        self.pod = pod
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._fsync = fsync
        self._io = io or SpoolIO()
        self._on_commit = on_commit
        self._ids = audit.EventIds()
        self.instance = ""
        self._link = Link()
        self._acked = Link()
        self._lock = threading.Lock()
        self._segments: list[SegmentInfo] = []
        self._fd: int | None = None
        self._queue: queue.SimpleQueue[_Job | _Mark | None] = queue.SimpleQueue()
        self._marks: dict[str, Path] = {}
        """Request id → its in-flight marker (writer thread only)."""
        self.recovered_interrupted = 0
        self._thread: threading.Thread | None = None
        self._last_time = 0.0
        self._oldest_unacked: float | None = None
        """Write time of the first event not acknowledged (None: none pending)."""
        self._read_pos: tuple[int, int, int] = (0, 0, 0)
        self._acked_pos: tuple[int, int, int] = (0, 0, 0)
        """(segment first sequence, byte offset, sequence at that offset): where the last
        batch read ended, and where the acknowledged events end."""
        self.committed = asyncio.Event()
        """Set (on the loop given to :meth:`start`) after each commit: the shipper waits on it."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.recovered_truncated = 0

    # ── lifecycle ────────────────────────────────────────────────────────────────────────────

    def open(self) -> None:
        """Recover the spool (blocking: call through ``asyncio.to_thread``)."""
        if self.directory is None:
            self.instance = audit.instance_id(self.namespace, self.pod, os.urandom(6).hex())
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.instance = self._instance()
        rec = self._recover()
        self._link, self._acked = rec.link, rec.acked
        self.recovered_truncated = rec.truncated
        self.recovered_interrupted = self._replay_inflight()
        log.info(
            "audit spool recovered",
            extra={
                "fields": {
                    "dir": str(self.directory),
                    "instance": self.instance,
                    "sequence": self._link.sequence,
                    "acknowledged": self._acked.sequence,
                    "segments": len(self._segments),
                    "torn_bytes_cut": rec.truncated,
                    "interrupted": self.recovered_interrupted,
                }
            },
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="aiguard-audit-spool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish queued appends and stop the writer (blocking)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self._io.close(self._fd)
            self._fd = None

    # ── the chain's identity ─────────────────────────────────────────────────────────────────

    def _instance(self) -> str:
        assert self.directory is not None
        path = self.directory / INSTANCE_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            doc = None
        except (OSError, ValueError) as e:
            raise SpoolUnavailable(f"{path} is unreadable: {e}") from e
        if isinstance(doc, dict) and (doc.get("namespace"), doc.get("pod")) == (
            self.namespace,
            self.pod,
        ):
            return audit.instance_id(self.namespace, self.pod, str(doc["boot_id"]))
        if isinstance(doc, dict):
            self._orphan(doc)
        boot = os.urandom(6).hex()
        _write_atomic(
            path,
            json.dumps({"namespace": self.namespace, "pod": self.pod, "boot_id": boot}).encode(),
        )
        return audit.instance_id(self.namespace, self.pod, boot)

    def _orphan(self, doc: dict[str, Any]) -> None:
        """The spool belongs to another pod identity (a reused directory): keep its files
        aside, never ship them as ours, and say so loudly."""
        assert self.directory is not None
        aside = self.directory / f"orphaned-{int(time.time())}"
        aside.mkdir()
        moved = 0
        for p in self.directory.iterdir():
            if p.name.endswith(SEGMENT_SUFFIX) or p.name in (CURSOR_FILE, INSTANCE_FILE):
                p.rename(aside / p.name)
                moved += 1
        log.error(
            "audit spool belonged to another pod; its files were moved aside, not shipped",
            extra={"fields": {"previous": doc, "moved_to": str(aside), "files": moved}},
        )

    # ── recovery ─────────────────────────────────────────────────────────────────────────────

    def _recover(self) -> _Recovered:
        assert self.directory is not None
        rec = _Recovered()
        cursor = self.directory / CURSOR_FILE
        try:
            doc = json.loads(cursor.read_text())
            rec.acked = Link(int(doc["sequence"]), str(doc["hash"]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpoolUnavailable(f"{cursor} is unreadable: {e}") from e
        found: list[tuple[int, int, Path]] = []
        for path in self.directory.iterdir():
            if path.name.endswith(SEGMENT_SUFFIX):
                # NAME.jsonl, then NAME.1.jsonl ... (successors of an abandoned segment)
                parts = path.name.removesuffix(SEGMENT_SUFFIX).split(".")
                found.append((int(parts[0]), int(parts[1]) if len(parts) > 1 else 0, path))
        scanned: list[tuple[SegmentInfo, Link]] = []
        for _, _, path in sorted(found):
            info, last, cut = self._scan(path)
            rec.truncated += cut
            if info is None or last is None:
                path.unlink()
                continue
            scanned.append((info, last))
        # A later segment starts where an abandoned one's unacknowledged tail began (a write
        # whose fsync failed and could not be cut back): that tail was never committed.
        for k in range(len(scanned) - 1):
            info, _ = scanned[k]
            nxt = scanned[k + 1][0].first
            if info.last >= nxt:
                cut_link = self._cut_from(info, nxt)
                rec.truncated += 1
                scanned[k] = (info, cut_link)
        rec.link = rec.acked
        for info, last in scanned:
            if last.sequence > rec.link.sequence:
                rec.link = last
            if info.last < info.first or info.last <= rec.acked.sequence:
                info.path.unlink()  # delivered before the restart (or emptied by the cut)
                continue
            self._segments.append(info)
        if self._segments and self._segments[0].first > rec.acked.sequence + 1:
            log.error(
                "audit spool is missing events after the acknowledged cursor",
                extra={
                    "fields": {
                        "acknowledged": rec.acked.sequence,
                        "first": self._segments[0].first,
                    }
                },
            )
        _fsync_dir(self.directory)
        return rec

    def _scan(self, path: Path) -> tuple[SegmentInfo | None, Link | None, int]:
        """One segment: its extent, its last event's link, and the torn bytes cut off."""
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        cut = len(data) - end
        if cut:
            _truncate(path, end)
            log.warning(
                "audit spool: cut a torn last line (the process stopped while writing it)",
                extra={"fields": {"segment": path.name, "bytes": cut}},
            )
        if end == 0:
            return None, None, cut
        lines = data[:end].splitlines()
        first_doc = json.loads(lines[0])
        last_doc = json.loads(lines[-1])
        first, last = int(first_doc[audit.SEQUENCE]), int(last_doc[audit.SEQUENCE])
        if last - first + 1 != len(lines):
            log.error(
                "audit spool segment is not contiguous",
                extra={"fields": {"segment": path.name, "first": first, "last": last}},
            )
        if self._oldest_unacked is None:  # approximate until the shipper reads the first batch
            self._oldest_unacked = audit.parse_time(str(first_doc[audit.TIME]))
        return (
            SegmentInfo(path, first, last, end),
            Link(last, str(last_doc[audit.HASH])),
            cut,
        )

    def _cut_from(self, info: SegmentInfo, sequence: int) -> Link:
        """Cut ``info``'s segment before its line of ``sequence``; the new last link."""
        data = info.path.read_bytes()
        offset = 0
        last = Link(info.first - 1, "")
        for line in data.splitlines(keepends=True):
            doc = json.loads(line)
            if int(doc[audit.SEQUENCE]) >= sequence:
                break
            offset += len(line)
            last = Link(int(doc[audit.SEQUENCE]), str(doc[audit.HASH]))
        _truncate(info.path, offset)
        log.warning(
            "audit spool: cut uncommitted events of an abandoned segment",
            extra={"fields": {"segment": info.path.name, "from_sequence": sequence}},
        )
        info.size, info.last = offset, last.sequence
        return last

    def _replay_inflight(self) -> int:
        """Seal every marker a previous process left (its stream never ended) as an event with
        outcome ``interrupted``, durably, then delete the markers. Returns how many."""
        assert self.directory is not None
        folder = self.directory / INFLIGHT_DIR
        if not folder.is_dir():
            return 0
        markers: list[tuple[float, str, Path, dict[str, Any]]] = []
        for path in folder.iterdir():
            if path.name.startswith("."):
                # ``.NAME.tmp``: the process died while writing that marker, before the rename
                # that commits it; its stream's earlier marker (if any) is the one that counts.
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            try:
                doc = json.loads(path.read_bytes())
                attrs = doc["attributes"]
                if not isinstance(attrs, dict):
                    raise TypeError("attributes is not an object")
                markers.append((path.stat().st_mtime, path.name, path, attrs))
            except (OSError, ValueError, KeyError, TypeError) as e:
                # A marker torn by the crash itself: the request started but left no metadata.
                log.error(
                    "audit spool: unreadable in-flight marker set aside",
                    extra={"fields": {"marker": path.name, "error": str(e)}},
                )
                with contextlib.suppress(OSError):
                    path.rename(self.directory / f"torn-inflight-{path.name}")
        if not markers:
            return 0
        markers.sort(key=lambda m: (m[0], m[1]))
        now = max(time.time(), self._last_time)
        link = self._link
        lines: list[bytes] = []
        for _, _, _, attrs in markers:
            attrs["aiguard.outcome"] = INTERRUPTED
            attrs["error.type"] = INTERRUPTED
            event, line = seal(
                Draft(attrs, None, None, None),
                instance=self.instance,
                link=link,
                event_id=self._ids.new(now),
                now=now,
            )
            link = Link(event[audit.SEQUENCE], event[audit.HASH])
            lines.append(line)
        self._write(b"".join(lines), self._link.sequence + 1)  # raises: markers stay
        if self._link.sequence == self._acked.sequence:
            self._oldest_unacked = now
        self._link, self._last_time = link, now
        self._segments[-1].last = link.sequence
        for _, _, path, _ in markers:
            path.unlink()
        _fsync_dir(folder)
        log.warning(
            "audit spool: requests in flight when the previous process stopped are recorded "
            "as interrupted",
            extra={"fields": {"events": len(markers), "last_sequence": link.sequence}},
        )
        return len(markers)

    # ── appending ────────────────────────────────────────────────────────────────────────────

    def mark(self, d: Draft) -> None:
        """A stream started: journal ``d`` (its event as it stands now) until the final event
        of the same request id is committed. Never blocks, never fails the request."""
        if self.directory is not None and self._thread is not None:
            self._queue.put(_Mark(d))

    def _write_mark(self, d: Draft) -> None:
        """Writer thread: the marker holds metadata and the input hash, never content."""
        assert self.directory is not None
        request_id = str(d.attributes.get(REQUEST_ID, ""))
        if not request_id or request_id in self._marks:
            return
        folder = self.directory / INFLIGHT_DIR
        attrs = dict(d.attributes)
        attrs["aiguard.input.hash"] = (
            audit.content_hash(d.inputs, d.key) if d.inputs is not None else None
        )
        attrs["aiguard.input.chars"] = sum(len(t) for _, t in d.inputs) if d.inputs else 0
        name = hashlib.sha256(request_id.encode()).hexdigest()[:32] + ".json"
        try:
            folder.mkdir(exist_ok=True, mode=0o700)
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(json.dumps({"attributes": attrs}, default=str).encode())
            tmp.replace(folder / name)
        except (OSError, TypeError, ValueError) as e:
            log.warning(
                "audit spool: in-flight marker not written", extra={"fields": {"error": str(e)}}
            )
            return
        self._marks[request_id] = folder / name

    def _clear_marks(self, drafts: Sequence[Draft]) -> None:
        """Writer thread, after a commit: the requests' final events are durable."""
        for d in drafts:
            path = self._marks.pop(str(d.attributes.get(REQUEST_ID, "")), None)
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()

    async def append(self, d: Draft) -> dict[str, Any]:
        """Seal ``d`` into the chain and make it durable; returns the event.
        Raises :class:`SpoolUnavailable`."""
        if self._thread is None:
            raise SpoolUnavailable("the audit spool is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._queue.put(_Job(d, loop, future))
        return await future

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            jobs: list[_Job] = []
            nxt: _Job | _Mark | None = first
            while nxt is not None:
                if isinstance(nxt, _Mark):
                    self._write_mark(nxt.draft)  # before any later append of the same request
                else:
                    jobs.append(nxt)
                if len(jobs) >= MAX_GROUP:
                    break
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
            if not jobs:
                continue
            try:
                self._commit(jobs)
            except BaseException as e:  # a bug: fail the jobs rather than hang the requests
                log.exception("audit spool writer failed")
                for j in jobs:
                    _resolve(j, None, SpoolUnavailable(f"audit spool writer failed: {e!r}"))

    def _commit(self, jobs: list[_Job]) -> None:
        now = max(time.time(), self._last_time)
        link = self._link
        sealed: list[tuple[_Job, dict[str, Any]]] = []
        lines: list[bytes] = []
        for job in jobs:
            try:
                event, line = seal(
                    job.draft,
                    instance=self.instance,
                    link=link,
                    event_id=self._ids.new(now),
                    now=now,
                )
            except Exception as e:  # one bad draft must not fail the others
                log.exception("audit event could not be built")
                _resolve(job, None, SpoolUnavailable(f"audit event could not be built: {e!r}"))
                continue
            link = Link(event[audit.SEQUENCE], event[audit.HASH])
            sealed.append((job, event))
            lines.append(line)
        if not sealed:
            return
        if self.directory is not None:
            try:
                self._write(b"".join(lines), self._link.sequence + 1)
            except OSError as e:
                reason = os.strerror(e.errno) if e.errno else str(e)
                err = SpoolUnavailable(f"audit spool write failed: {reason}")
                for job, _ in sealed:
                    _resolve(job, None, err)
                return
            except SpoolUnavailable as e:
                for job, _ in sealed:
                    _resolve(job, None, e)
                return
        with self._lock:
            if self._link.sequence == self._acked.sequence:  # nothing was pending
                self._oldest_unacked = now
            self._link = link
            self._last_time = now
            if self._segments:
                self._segments[-1].last = link.sequence
        for job, event in sealed:
            _resolve(job, event, None)
        if self._marks:
            self._clear_marks([job.draft for job, _ in sealed])
        if self._on_commit is not None:
            try:
                self._on_commit(lines)
            except Exception:
                log.exception("audit copy failed")
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(self.committed.set)

    def _write(self, data: bytes, first_sequence: int) -> None:
        """Append ``data`` durably to the active segment (rotating first when it is full)."""
        if self.bytes() + len(data) > self.max_bytes:
            self._drop_delivered_active()
        if self.bytes() + len(data) > self.max_bytes:
            raise SpoolUnavailable(
                f"audit spool is full ({self.bytes()} bytes, limit {self.max_bytes}): the "
                "collector has not acknowledged events for a while"
            )
        seg = self._segments[-1] if self._segments else None
        if self._fd is None or seg is None or seg.size >= self.segment_bytes:
            seg = self._new_segment(first_sequence)
        assert self._fd is not None
        before = seg.size
        try:
            written = 0
            while written < len(data):
                n = self._io.write(self._fd, data[written:] if written else data)
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                written += n
            if self._fsync:
                self._io.fsync(self._fd)
        except OSError:
            self._rollback(seg, before)
            raise
        with self._lock:
            seg.size = before + len(data)

    def _drop_delivered_active(self) -> None:
        """Writer thread, spool full: when every event of the active segment is acknowledged,
        delete it (the next append starts a new one). Without this, a limit smaller than one
        segment stays full forever once reached: ``ack`` never deletes the active segment."""
        with self._lock:
            seg = self._segments[-1] if self._segments else None
            if seg is None or seg.last > self._acked.sequence:
                return
            self._segments.pop()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                self._io.close(fd)
        with contextlib.suppress(OSError):
            seg.path.unlink()

    def _new_segment(self, first: int) -> SegmentInfo:
        assert self.directory is not None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                self._io.close(fd)
        path = self.directory / _segment_name(first)
        n = 0
        while path.exists():  # left by a failed rollback (torn): never append after it
            n += 1
            path = self.directory / f"{first:020d}.{n}{SEGMENT_SUFFIX}"
        fd = self._io.open(path)
        try:
            _fsync_dir(self.directory)
        except BaseException:
            self._io.close(fd)
            raise
        self._fd = fd
        seg = SegmentInfo(path, first, first - 1, 0)
        with self._lock:
            if self._segments and self._segments[-1].last < self._segments[-1].first:
                # the previous active segment never got an event: forget it
                empty = self._segments.pop()
                with contextlib.suppress(OSError):
                    empty.path.unlink()
            self._segments.append(seg)
        return seg

    def _rollback(self, seg: SegmentInfo, size: int) -> None:
        """Undo a failed append: cut the segment back to its committed size. When even that
        fails, abandon the segment's file handle; the next append starts a new segment (and
        recovery cuts the torn tail)."""
        assert self._fd is not None
        try:
            self._io.truncate(self._fd, size)
        except OSError:
            log.error(
                "audit spool: could not cut back a failed write; starting a new segment",
                extra={"fields": {"segment": seg.path.name}},
            )
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                self._io.close(fd)

    # ── reading and acknowledging (the shipper) ──────────────────────────────────────────────

    @property
    def link(self) -> Link:
        """The chain's head (last event committed)."""
        return self._link

    @property
    def acked(self) -> Link:
        return self._acked

    def depth(self) -> int:
        """Events committed and not yet acknowledged."""
        if self.directory is None:
            return 0
        return self._link.sequence - self._acked.sequence

    def bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments)

    def lag(self) -> float:
        """Seconds since the oldest unacknowledged event was written (0 when none)."""
        oldest = self._oldest_unacked
        if oldest is None or self.depth() <= 0:
            return 0.0
        return max(0.0, time.time() - oldest)

    def read_batch(self, *, max_events: int, max_bytes: int) -> Batch | None:
        """Committed lines after the cursor, within one segment (blocking)."""
        start = self._acked.sequence + 1
        with self._lock:
            seg = next((s for s in self._segments if s.first <= start <= s.last), None)
            if seg is None:
                return None
            path, seg_first, size = seg.path, seg.first, seg.size
        offset = self._offset_of(seg_first, start)
        lines: list[bytes] = []
        taken = 0
        with open(path, "rb") as f:
            f.seek(offset)
            while len(lines) < max_events and offset + taken < size:
                line = f.readline(size - offset - taken)
                if not line.endswith(b"\n"):
                    break
                if lines and taken + len(line) > max_bytes:
                    break
                lines.append(line.rstrip(b"\n"))
                taken += len(line)
        if not lines:
            return None
        last = json.loads(lines[-1])
        last_seq = int(last[audit.SEQUENCE])
        if last_seq != start + len(lines) - 1:
            raise SpoolUnavailable(
                f"segment {path.name}: expected sequence {start + len(lines) - 1} at that "
                f"position, found {last_seq}"
            )
        self._read_pos = (seg_first, offset + taken, last_seq + 1)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            first_time = audit.parse_time(str(json.loads(lines[0])[audit.TIME]))
            with self._lock:
                if self._acked.sequence + 1 == start:
                    self._oldest_unacked = first_time
        return Batch(lines, start, last_seq, str(last[audit.HASH]), (seg_first, offset + taken))

    def _offset_of(self, seg_first: int, sequence: int) -> int:
        """Byte offset of ``sequence`` in the segment starting at ``seg_first``."""
        for pos in (self._acked_pos, self._read_pos):
            if pos[0] == seg_first and pos[2] == sequence:
                return pos[1]
        if sequence == seg_first:
            return 0
        # After a restart: count lines from the segment's start.
        with self._lock:
            seg = next(s for s in self._segments if s.first == seg_first)
            path = seg.path
        offset = 0
        with open(path, "rb") as f:
            for _ in range(sequence - seg_first):
                offset += len(f.readline())
        return offset

    def ack(self, batch: Batch) -> None:
        """The collector has the batch: move the durable cursor, delete delivered segments
        (blocking)."""
        assert self.directory is not None
        link = Link(batch.last_sequence, batch.last_hash)
        _write_atomic(
            self.directory / CURSOR_FILE,
            json.dumps({"sequence": link.sequence, "hash": link.hash}).encode(),
        )
        done: list[Path] = []
        with self._lock:
            self._acked = link
            self._acked_pos = (batch.end[0], batch.end[1], link.sequence + 1)
            keep: list[SegmentInfo] = []
            for i, s in enumerate(self._segments):
                active = i == len(self._segments) - 1
                if not active and s.last <= link.sequence:
                    done.append(s.path)
                else:
                    keep.append(s)
            self._segments = keep
            if link.sequence >= self._link.sequence:
                self._oldest_unacked = None
            # else: kept (older, so the lag errs high) until the next read_batch sets it
        for p in done:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _resolve(job: _Job, event: dict[str, Any] | None, error: BaseException | None) -> None:
    def done() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            assert event is not None
            job.future.set_result(event)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        job.loop.call_soon_threadsafe(done)
