"""Fixtures for the fault-injection tests.

The sidecar fixtures (``ca``, ``secrets``, ``upstream``, ``backup``, ``start_sidecar`` and the
``no_blocking`` loop watchdog) are the end-to-end tests' own, from ``tests/sidecar/conftest.py``;
the collector and the audited sidecar (``collector``, ``start``) come from
``tests/sidecar/test_audit_delivery.py``. Added here: :class:`SidecarProcess`, the real
``aiguard-sidecar`` as a subprocess (to kill it with SIGKILL), with a durable spool shipping to
the in-process collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness.cluster import free_ports
from tests.sidecar.conftest import (  # noqa: F401 (fixtures)
    SecretVolume,
    backup,
    ca,
    no_blocking,
    secrets,
    start_sidecar,
    upstream,
)
from tests.sidecar.test_audit_delivery import Collector, collector, start  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
WORKLOAD_ENV = {
    "AIGUARD_POD_NAMESPACE": "team-a",
    "AIGUARD_POD_SERVICE_ACCOUNT": "chatbot",
    "AIGUARD_POD_NAME": "chatbot-5d9c-abcde",
}


class SidecarProcess:
    """``python -m aiguard_sidecar.main`` on 127.0.0.1 with a spool directory that outlives it;
    ``kill()`` sends SIGKILL (no drain, no flush: what an OOM kill or a node problem does)."""

    def __init__(self, workdir: Path, policy: dict[str, Any], volume: SecretVolume) -> None:
        self.workdir = workdir
        self.policy_path = workdir / "policy.json"
        self.policy_path.write_text(json.dumps(policy))
        self.spool_dir = workdir / "spool"
        self.token = workdir / "token"
        self.token.write_text("test-token\n")
        self.secrets = volume
        self.port, self.admin_port = 0, 0
        self.proc: asyncio.subprocess.Process | None = None
        self.log = workdir / "sidecar.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, collector_url: str) -> None:
        assert self.proc is None
        self.port, self.admin_port = free_ports(2)
        argv = [
            sys.executable,
            "-m",
            "aiguard_sidecar.main",
            "--policy",
            str(self.policy_path),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--admin",
            f"127.0.0.1:{self.admin_port}",
            "--secrets-dir",
            str(self.secrets.root),
            "--collector-url",
            collector_url,
            "--spool-dir",
            str(self.spool_dir),
            "--collector-token-file",
            str(self.token),
            "--log-level",
            "warning",
        ]
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=REPO,
                env={**os.environ, **WORKLOAD_ENV},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    pytest.fail(f"sidecar exited {self.proc.returncode}:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.admin_port}/readyz") as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    pytest.fail(f"sidecar not ready after 60 s:\n{self.tail()}")
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.proc = None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None

    def inflight_markers(self) -> list[Path]:
        folder = self.spool_dir / "inflight"
        # Committed markers only: ``.NAME.tmp`` is one being written (renamed when complete).
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@pytest.fixture
async def sidecar_process() -> AsyncIterator[list[SidecarProcess]]:
    """A list to put started :class:`SidecarProcess` es in; all are stopped at the end."""
    started: list[SidecarProcess] = []
    yield started
    for p in started:
        await p.stop()
