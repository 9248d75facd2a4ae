"""The policy in force, and its hot reload from the mounted file.

The policy file is polled (one ``stat`` per interval, in a worker thread). A ConfigMap volume
updates by swapping the ``..data`` symlink, which changes the file's inode; any change of
inode, size or mtime makes the store read the file and compare its SHA-256 with the content in
force, so touching a file or re-mounting identical content does nothing.

A changed file is parsed and compiled off the event loop into a new
:class:`~aiguard_sidecar.runtime.Runtime`, then swapped in with one assignment. Requests hold
the runtime they started with (:meth:`PolicyStore.acquire` / :meth:`PolicyStore.release`); the
old runtime is closed when its last request ends. A file that does not parse or compile leaves
the last good policy in force, logs one line and increments
``aiguard_policy_reload_failures_total`` (once per distinct bad content, not once per poll).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiguard_api.errors import ConfigError
from aiguard_api.view import SidecarConfig
from aiguard_sidecar import memory, policy_load
from aiguard_sidecar.metrics import Metrics
from aiguard_sidecar.runtime import Runtime

log = logging.getLogger("aiguard.sidecar.policy")

POLICY_POLL_SECONDS: Final = 1.0
"""How often the application's watch task calls :meth:`PolicyStore.check`."""

Signature = tuple[int, int, int, int]
Builder = Callable[[SidecarConfig, Runtime | None], Awaitable[Runtime]]
Parser = Callable[[bytes, str, str | None], SidecarConfig]
"""A policy file's bytes, its name, the secrets directory override → the validated config
(blocking; :class:`ConfigError` for a policy that cannot be used)."""


def _stat(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read(path: Path) -> tuple[Signature | None, bytes]:
    sig = _stat(path)
    return sig, path.read_bytes()


async def _trim() -> None:
    await asyncio.to_thread(memory.trim)


class PolicyStore:
    def __init__(
        self,
        path: Path,
        *,
        builder: Builder,
        metrics: Metrics,
        secrets_dir: str | None = None,
        parse: Parser = policy_load.parse,
    ) -> None:
        self.path = path
        self._builder = builder
        self._parse = parse
        self._metrics = metrics
        self._secrets_dir = secrets_dir
        self._current: Runtime | None = None
        self._signature: Signature | None = None
        self._digest: bytes = b""
        self._rejected: bytes = b""  # digest of the last bad content (reported once)
        self._lock = asyncio.Lock()
        self._live: list[Runtime] = []  # current + retired ones with requests in flight
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def current(self) -> Runtime:
        if self._current is None:
            raise RuntimeError("no policy loaded")
        return self._current

    @property
    def loaded(self) -> bool:
        return self._current is not None

    # ── request side ────────────────────────────────────────────────────────────────────────

    def acquire(self) -> Runtime:
        """The runtime in force, held until :meth:`release`."""
        rt = self.current
        rt.inflight += 1
        return rt

    def release(self, rt: Runtime) -> None:
        rt.inflight -= 1
        if rt.retired and rt.inflight == 0:
            self._close_later(rt)

    # ── loading ─────────────────────────────────────────────────────────────────────────────

    async def load(self) -> Runtime:
        """Initial load: raises :class:`ConfigError` when the file cannot be used."""
        async with self._lock:
            try:
                sig, data = await asyncio.to_thread(_read, self.path)
            except OSError as e:
                raise ConfigError(f"{self.path}: cannot read: {e.strerror}") from e
            await self._apply(sig, data)
            return self.current

    async def check(self) -> bool:
        """One poll: reload when the file changed. True when a new policy went into force."""
        async with self._lock:
            sig = await asyncio.to_thread(_stat, self.path)
            if sig is None or sig == self._signature:
                return False
            try:
                sig, data = await asyncio.to_thread(_read, self.path)
            except OSError:
                return False  # mid-swap; the next poll sees the new file
            try:
                return await self._apply(sig, data)
            except (ConfigError, ValueError, OSError) as e:
                digest = hashlib.sha256(data).digest()
                self._signature = sig
                if digest != self._rejected:
                    self._rejected = digest
                    self._metrics.policy_reload_failures.inc()
                    log.error(
                        "policy reload rejected; the last good policy stays in force",
                        extra={"fields": {"error": str(e), "policy": self.current.name}},
                    )
                return False

    async def _apply(self, sig: Signature | None, data: bytes) -> bool:
        digest = hashlib.sha256(data).digest()
        if self._current is not None and digest == self._digest:
            self._signature = sig
            return False
        cfg = await asyncio.to_thread(self._parse, data, str(self.path), self._secrets_dir)
        previous = self._current
        runtime = await self._builder(cfg, previous)
        self._current = runtime
        self._live.append(runtime)
        self._signature, self._digest, self._rejected = sig, digest, b""
        self._metrics.set_policy(runtime.name, runtime.hash)
        if previous is not None:
            self._metrics.policy_reloads.inc()
            previous.retired = True
            if previous.inflight == 0:
                self._close_later(previous)
            # what building this version allocated and freed goes back to the kernel
            trimmed = asyncio.get_running_loop().create_task(_trim())
            self._closing.add(trimmed)
            trimmed.add_done_callback(self._closing.discard)
        log.info(
            "policy loaded" if previous is None else "policy reloaded",
            extra={
                "fields": {
                    "policy": runtime.name,
                    "hash": runtime.hash,
                    "generation": runtime.cfg.policy.generation,
                    "mode": runtime.cfg.spec.mode.value,
                }
            },
        )
        return True

    # ── closing ─────────────────────────────────────────────────────────────────────────────

    def _close_later(self, rt: Runtime) -> None:
        if rt in self._live:
            self._live.remove(rt)
        task = asyncio.get_running_loop().create_task(rt.close(list(self._live)))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every runtime (at shutdown, after requests have drained)."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        live, self._live, self._current = self._live, [], None
        for i, rt in enumerate(live):
            await rt.close(live[i + 1 :])
