"""Hyperscan databases compiled in a short-lived child process, loaded here from their bytes.

Hyperscan's compiler leaves ~5.5 MB resident in the process that runs it, even for one tiny
pattern and after ``malloc_trim`` (its tables stay; ``benchmarks.sidecar_proxy rss``
measures the sidecar's idle RSS). A serialized database deserializes (``hyperscan.loadb``)
into about its own size. So every compile of the sidecar goes through :func:`compile_many`:

* a child ``python -I -B`` (the same interpreter, so the same Hyperscan build) reads the
  expressions from a pipe, compiles each database, and writes ``hyperscan.dumpb`` of it back
  with its SHA-256; nothing touches the disk (the container's root file system is read-only);
* the parent checks the digest and loads the bytes with ``hyperscan.loadb``, which itself
  refuses a database of another Hyperscan version or platform, or whose bytecode fails its
  CRC (the digest also covers the header and padding, which that CRC does not);
* a pattern Hyperscan rejects comes back as its :class:`hyperscan.error`, as an in-process
  compile would raise it;
* anything else (no interpreter to start, the child killed, a short or corrupt reply, a
  database ``loadb`` refuses) compiles in this process instead, with a warning: the policy
  loads as before, at the old memory cost. A wrong database is never scanned with.

Identical databases (the input and output PII guardrails usually hold the same rules) are
compiled once and shared while some owner still holds them (:class:`Compiled`).

Blocking (a child takes ~25 ms to start, then the compile time): guardrails are built in a
worker thread (``guarding.build_cached``), never on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import hyperscan

log = logging.getLogger("aiguard.sidecar.guardrails")

CHILD_TIMEOUT: Final = 300.0  # seconds; a policy of many thousands of patterns compiles in ~10

# The child: one JSON request on stdin; per database a JSON header line, then its bytes.
_CHILD: Final = r"""
import hashlib, json, sys
import hyperscan as hs
req = json.loads(sys.stdin.buffer.read())
out = sys.stdout.buffer
for spec in req["dbs"]:
    exprs = [bytes.fromhex(e) for e in spec["expressions"]]
    db = hs.Database(mode=spec["mode"])
    try:
        db.compile(expressions=exprs, ids=spec["ids"], elements=len(exprs), flags=spec["flags"])
    except hs.error as e:
        out.write(json.dumps({"error": str(e)}).encode() + b"\n")
        continue
    data = hs.dumpb(db) if spec["dump"] else b""
    head = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    out.write(json.dumps(head).encode() + b"\n" + data)
out.flush()
"""


@dataclass(frozen=True, slots=True)
class Spec:
    """One database: expressions (bytes), their ids and flags, in Hyperscan block mode."""

    expressions: tuple[bytes, ...]
    ids: tuple[int, ...]
    flags: tuple[int, ...]
    mode: int = hyperscan.HS_MODE_BLOCK

    def key(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.mode}|{self.ids}|{self.flags}|".encode())
        for e in self.expressions:
            h.update(len(e).to_bytes(8, "big") + e)
        return h.hexdigest()


class Compiled:
    """A loaded database and its key; owners keep a reference so that others reuse it."""

    __slots__ = ("__weakref__", "db", "key")

    def __init__(self, key: str, db: Any) -> None:
        self.key = key
        self.db = db


class ChildError(RuntimeError):
    """The compile child failed in a way that says nothing about the patterns."""


_shared: weakref.WeakValueDictionary[str, Compiled] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()
_stats = {"child": 0, "in_process": 0, "shared": 0}


def stats() -> dict[str, int]:
    """Databases compiled by a child, in this process (fallback), and reused (for tests)."""
    return dict(_stats)


def compile_many(specs: Sequence[Spec]) -> list[Compiled | hyperscan.error]:
    """Each spec's database, or the :class:`hyperscan.error` that rejected its patterns."""
    out: list[Compiled | hyperscan.error | None] = [None] * len(specs)
    todo: dict[str, list[int]] = {}
    with _shared_lock:
        for i, spec in enumerate(specs):
            key = spec.key()
            hit = _shared.get(key)
            if hit is not None:
                out[i] = hit
                _stats["shared"] += 1
            else:
                todo.setdefault(key, []).append(i)
    if todo:
        firsts = [specs[idx[0]] for idx in todo.values()]
        try:
            results = _in_child(firsts, dump=True)
            _stats["child"] += len(firsts)
        except ChildError as e:
            log.warning(
                "Hyperscan compile child failed; compiling in the sidecar process",
                extra={"fields": {"error": str(e)}},
            )
            results = [_in_process(s) for s in firsts]
            _stats["in_process"] += len(firsts)
        with _shared_lock:
            for (key, idx), res in zip(todo.items(), results, strict=True):
                if isinstance(res, hyperscan.error):
                    item: Compiled | hyperscan.error = res
                else:
                    item = _shared.get(key) or Compiled(key, res)
                    _shared[key] = item
                for i in idx:
                    out[i] = item
    return [x for x in out if x is not None]


def check_many(specs: Sequence[Spec]) -> list[str | None]:
    """For each spec: None when Hyperscan compiles it, else its error message. Checked in a
    child (in this process if the child fails), nothing kept."""
    if not specs:
        return []
    try:
        results = _in_child(specs, dump=False)
    except ChildError as e:
        log.warning(
            "Hyperscan compile child failed; checking patterns in the sidecar process",
            extra={"fields": {"error": str(e)}},
        )
        results = [_in_process(s) for s in specs]
    return [str(r.args[0]) if isinstance(r, hyperscan.error) else None for r in results]


def _in_process(spec: Spec) -> Any:
    db = hyperscan.Database(mode=spec.mode)
    try:
        db.compile(
            expressions=list(spec.expressions),
            ids=list(spec.ids),
            elements=len(spec.expressions),
            flags=list(spec.flags),
        )
    except hyperscan.error as e:
        return e
    return db


def child_command() -> list[str]:
    """``python -I -B -c CHILD``: isolated (no current directory or ``PYTHONPATH`` on the
    path, so no stray ``hyperscan.py`` is imported), writing no bytecode (``-I`` also ignores
    ``PYTHONDONTWRITEBYTECODE``; the root file system may be read-only), the interpreter
    running the sidecar."""
    if not sys.executable:
        raise ChildError("no Python interpreter to start (sys.executable is empty)")
    return [sys.executable, "-I", "-B", "-c", _CHILD]


def _in_child(specs: Sequence[Spec], *, dump: bool) -> list[Any]:
    request = json.dumps(
        {
            "dbs": [
                {
                    "expressions": [e.hex() for e in s.expressions],
                    "ids": list(s.ids),
                    "flags": list(s.flags),
                    "mode": s.mode,
                    "dump": dump,
                }
                for s in specs
            ]
        }
    ).encode()
    try:
        proc = subprocess.run(  # our interpreter, fixed code, no shell
            child_command(),
            input=request,
            capture_output=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise ChildError(f"cannot run the compile child: {e}") from e
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ChildError(f"compile child exited with {proc.returncode}: {tail[0]}")
    return parse_reply(proc.stdout, specs, dump=dump)


def parse_reply(data: bytes, specs: Sequence[Spec], *, dump: bool) -> list[Any]:
    """The child's reply as databases (``dump``) or True, or :class:`hyperscan.error`;
    :class:`ChildError` when it is short, corrupt, or not what was asked for."""
    out: list[Any] = []
    pos = 0
    for spec in specs:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise ChildError("compile child reply is short")
        try:
            head = json.loads(data[pos:nl])
        except ValueError as e:
            raise ChildError("compile child reply is not JSON") from e
        pos = nl + 1
        if not isinstance(head, dict):
            raise ChildError("compile child reply is not an object")
        if "error" in head:
            out.append(hyperscan.error(str(head["error"])))
            continue
        size = head.get("size")
        if not isinstance(size, int) or size < 0 or pos + size > len(data):
            raise ChildError("compile child reply is short")
        blob = data[pos : pos + size]
        pos += size
        if hashlib.sha256(blob).hexdigest() != head.get("sha256"):
            raise ChildError("compile child reply fails its checksum")
        if not dump:
            out.append(True)
            continue
        if not blob:
            raise ChildError("compile child sent no database")
        try:
            db = hyperscan.loadb(blob, spec.mode)
        except hyperscan.error as e:  # another Hyperscan version/platform, or corrupt
            raise ChildError(f"compiled database does not load: {e}") from e
        out.append(db)
    if pos != len(data):
        raise ChildError("compile child reply has trailing data")
    return out
