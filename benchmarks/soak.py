"""Soak: a real ``aiguard-sidecar`` process under mixed traffic with upstream faults, for a
bounded time, watching for leaks, drift and lost evidence.

    python -m benchmarks.soak                 # 3 minutes (AIGUARD_SOAK_MINUTES, at most 10)
    python -m benchmarks.soak --minutes 1

What runs (all on 127.0.0.1):

* the sidecar, as ``aiguard-sidecar`` (a subprocess, the default guardrails of the policy on),
  with a durable spool (fsync on) shipping to the collector;
* the provider stand-in (``tests/harness/standin.py``, plain HTTP) in a thread of this
  process, injecting a fault into about one request in twenty: HTTP 500 and 429, TCP reset,
  slow headers, a stalled stream, a truncated stream, an in-stream error;
* the collector's HTTP app (``aiguard_operator.collector``, SQLite) in another thread;
* the load: ``--concurrency`` clients sending non-streamed chat (55 %), streamed chat (35 %)
  and embeddings (10 %), with varied prompts.

Every few seconds the sidecar's RSS, open file descriptors and threads are sampled from
``/proc``. At the end the load stops, the spool drains, the sidecar is stopped with SIGTERM, and
the events the collector stored are compared with the requests the clients sent (every request
that reached the sidecar, whatever its status, must be one event).

Recorded in ``benchmarks/results/soak.json``: the memory slope (MB/min, least squares over the
samples after the first minute's warm-up), fds at start and end, latency percentiles per minute
(non-streamed requests that succeeded; time to first byte for streams), status counts, events
vs requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks import common

NAME = "soak"
DEFAULT_MINUTES = 3.0
MAX_MINUTES = 10.0
SAMPLE_SECONDS = 5.0
FAULT_RATE = 0.05
PROMPTS = (
    "What is the capital of France?",
    "Summarise the plot of Hamlet in two sentences.",
    "Write a haiku about autumn leaves.",
    "Explain how a hash table handles collisions.",
    "List three uses of a Raspberry Pi at home.",
    "Translate 'good morning, how are you today' into Spanish.",
    "What are the main differences between TCP and UDP?",
    "Give me a short recipe for pancakes.",
)
WORKLOAD_ENV = {
    "AIGUARD_POD_NAMESPACE": "soak",
    "AIGUARD_POD_SERVICE_ACCOUNT": "soak-app",
    "AIGUARD_POD_NAME": "soak-pod",
    "PYTHONOPTIMIZE": "2",  # as the image runs the sidecar (Dockerfile.sidecar)
}


def policy(upstream_port: int) -> dict[str, Any]:
    providers = [
        {
            "name": name,
            "type": "openai",
            "baseURL": f"http://127.0.0.1:{upstream_port}/v1",
            "allowPlaintext": True,
            "apiKeySecretRef": {"name": "openai"},
            "timeouts": {"readSeconds": 1.0},
        }
        for name in ("primary", "secondary")
    ]
    return {
        "apiVersion": "aiguard.dev/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": "soak", "namespace": "soak"},
        "spec": {
            "providers": providers,
            "routes": [
                {
                    "name": "gpt",
                    "models": ["gpt-4o", "text-embedding-3-small"],
                    "targets": [{"provider": "primary"}, {"provider": "secondary"}],
                }
            ],
            "resilience": {"breakerFailureThreshold": 5, "breakerOpenSeconds": 1},
            "access": {
                "rules": [
                    {
                        "name": "soak-app",
                        "subjects": {"serviceAccounts": ["soak-app"]},
                        "models": ["*"],
                        "operations": ["chat", "embeddings"],
                    }
                ]
            },
        },
    }


# ── the collector, in a thread with its own loop ─────────────────────────────────────────────


class CollectorThread:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = common.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("collector did not start")

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from aiguard_operator.collector.server import Deps, create_app
        from aiguard_operator.collector.store import SQLiteStore

        store = SQLiteStore(self.db)
        await store.open()

        async def no_retention() -> dict[tuple[str, str], int]:
            return {}

        runner = web.AppRunner(create_app(Deps(store, None, False, no_retention)), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await store.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


async def count_events(db: Path) -> tuple[int, list[str], int]:
    """(events, chain problems, distinct request ids) in the collector's database."""
    from aiguard_api import audit
    from aiguard_operator.collector.store import EventQuery, SQLiteStore

    store = SQLiteStore(db)
    await store.open()
    try:
        events: list[dict[str, Any]] = []
        after = None
        while True:
            page = await store.events(EventQuery(order="sequence", after=after))
            events += [json.loads(b) for b in page.bodies]
            if page.next is None:
                break
            after = page.next
    finally:
        await store.close()
    problems = [str(p) for p in audit.verify_chain(events)] if events else []
    return len(events), problems, len({e["aiguard.request.id"] for e in events})


# ── the sidecar process ──────────────────────────────────────────────────────────────────────


def proc_sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"].strip()),
        "cpu_s": common.cpu_seconds(pid),
    }


async def metric(admin: int, name: str) -> float | None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{admin}/metrics") as r,
    ):
        for line in (await r.text()).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


# ── load ─────────────────────────────────────────────────────────────────────────────────────


@dataclass
class Load:
    started: float
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    client_errors: Counter[str] = field(default_factory=Counter)
    latency: dict[int, list[float]] = field(default_factory=dict)
    """minute → seconds of successful non-streamed requests."""
    ttfb: dict[int, list[float]] = field(default_factory=dict)
    """minute → seconds to the first byte of successful streams."""


def inject(standin: Any, rng: random.Random, load: Load) -> None:
    from tests.harness.standin import Fault

    kind = rng.choice(["500", "429", "reset", "slow_headers", "stall", "truncate", "stream_error"])
    fault = {
        "500": Fault.http(500),
        "429": Fault.rate_limited(1),
        "reset": Fault.reset(),
        "slow_headers": Fault.slow_headers(1.5),  # past the 1 s read timeout
        "stall": Fault.stall_stream(1, 1.5),
        "truncate": Fault.truncate_stream(1),
        "stream_error": Fault.stream_error(1),
    }[kind]
    standin.fail_next(fault)
    load.faults[kind] += 1


async def worker(
    k: int, url: str, deadline: float, standin: Any, load: Load, http: aiohttp.ClientSession
) -> None:
    rng = random.Random(k)
    while time.monotonic() < deadline:
        roll = rng.random()
        kind = "chat" if roll < 0.55 else "stream" if roll < 0.90 else "embeddings"
        prompt = rng.choice(PROMPTS)
        if kind == "embeddings":
            path, body = (
                "/openai/v1/embeddings",
                {"model": "text-embedding-3-small", "input": prompt},
            )
        else:
            path = "/openai/v1/chat/completions"
            body = {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": prompt}],
                "stream": kind == "stream",
            }
        if rng.random() < FAULT_RATE:
            inject(standin, rng, load)
        minute = int((time.monotonic() - load.started) // 60)
        t0 = time.perf_counter()
        load.sent += 1
        load.kinds[kind] += 1
        try:
            async with http.post(url + path, json=body) as r:
                if kind == "stream" and r.status == 200:
                    await r.content.readany()
                    load.ttfb.setdefault(minute, []).append(time.perf_counter() - t0)
                await r.read()
                load.statuses[str(r.status)] += 1
                if kind != "stream" and r.status == 200:
                    load.latency.setdefault(minute, []).append(time.perf_counter() - t0)
        except (aiohttp.ClientError, TimeoutError) as e:
            # The sidecar got the request and decided it: it is still one event.
            load.client_errors[type(e).__name__] += 1


# ── the run ──────────────────────────────────────────────────────────────────────────────────


def slope_mb_per_min(samples: list[dict[str, float]], skip_seconds: float) -> float | None:
    pts = [(s["t"] / 60, s["rss_mb"]) for s in samples if s["t"] >= skip_seconds]
    if len(pts) < 3:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


async def run(minutes: float, concurrency: int, *, keep: bool = False) -> dict[str, Any]:
    from tests.harness.standin import ProviderStandIn

    work = Path(tempfile.mkdtemp(prefix="aiguard-soak-"))
    secrets = work / "secrets" / "openai"
    secrets.mkdir(parents=True)
    (secrets / "api-key").write_text("sk-soak")
    (work / "token").write_text("soak-token\n")
    standin_thread = ProviderStandIn.run_in_thread(
        openai_keys=["sk-soak"], stream_chunks=8, chunk_delay=0.01
    )
    standin = standin_thread.standin
    collector = CollectorThread(work / "collector.db")
    collector.start()
    (work / "policy.json").write_text(json.dumps(policy(standin.port)))
    port, admin = common.free_port(), common.free_port()
    cmd = [
        sys.executable,
        "-m",
        "aiguard_sidecar.main",
        "--policy",
        str(work / "policy.json"),
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        f"127.0.0.1:{admin}",
        "--secrets-dir",
        str(work / "secrets"),
        "--collector-url",
        collector.url,
        "--spool-dir",
        str(work / "spool"),
        "--collector-token-file",
        str(work / "token"),
        "--log-level",
        "warning",
    ]
    log = (work / "sidecar.log").open("wb")
    proc = await asyncio.to_thread(
        subprocess.Popen,
        cmd,
        env={**os.environ, **WORKLOAD_ENV},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    samples: list[dict[str, float]] = []
    try:
        await asyncio.to_thread(
            common.wait_http, "127.0.0.1", admin, "/readyz", timeout=60, proc=proc
        )
        url = f"http://127.0.0.1:{port}"
        load = Load(started=time.monotonic())
        deadline = load.started + minutes * 60

        async def sampler() -> None:
            while True:
                s = proc_sample(proc.pid)
                s["t"] = time.monotonic() - load.started
                s["requests"] = load.sent
                samples.append(s)
                print(
                    f"  t={s['t']:5.0f}s rss={s['rss_mb']:6.1f} MB fds={s['fds']:3.0f} "
                    f"threads={s['threads']:2.0f} requests={load.sent}",
                    flush=True,
                )
                await asyncio.sleep(SAMPLE_SECONDS)

        sampling = asyncio.create_task(sampler())
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            await asyncio.gather(
                *(worker(k, url, deadline, standin, load, http) for k in range(concurrency))
            )
        elapsed = time.monotonic() - load.started
        await asyncio.sleep(SAMPLE_SECONDS)  # one sample after the load, connections idle
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        end = proc_sample(proc.pid)
        drain_start = time.monotonic()
        while (await metric(admin, "aiguard_audit_spool_depth") or 0) > 0:
            if time.monotonic() - drain_start > 60:
                break
            await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        collector.stop()
        standin_thread.stop()
    events, problems, distinct = await count_events(work / "collector.db")
    if keep:
        print(f"soak: kept {work} (sidecar.log, collector.db)")
    else:
        shutil.rmtree(work, ignore_errors=True)
    per_minute = [
        {
            "minute": m,
            "latency_ms": {
                k: common.rounded(v * 1000 if k != "n" else v, 2)
                for k, v in common.summarize(load.latency.get(m, [])).items()
            },
            "stream_ttfb_ms": {
                k: common.rounded(v * 1000 if k != "n" else v, 2)
                for k, v in common.summarize(load.ttfb.get(m, [])).items()
            },
        }
        for m in sorted(set(load.latency) | set(load.ttfb))
    ]
    warmup = min(60.0, minutes * 60 / 3)
    return {
        "minutes": minutes,
        "elapsed_seconds": round(elapsed, 1),
        "concurrency": concurrency,
        "requests": load.sent,
        "requests_per_second": round(load.sent / elapsed, 1),
        "kinds": dict(load.kinds),
        "statuses": dict(load.statuses),
        "client_errors": dict(load.client_errors),
        "faults_injected": dict(load.faults),
        "events": events,
        "distinct_request_ids": distinct,
        "events_equal_requests": events == load.sent == distinct,
        "chain_problems": problems[:10],
        "sidecar_exit_code": exit_code,
        "memory": {
            "rss_start_mb": common.rounded(samples[0]["rss_mb"], 1) if samples else None,
            "rss_end_mb": common.rounded(end["rss_mb"], 1),
            "rss_max_mb": common.rounded(max(s["rss_mb"] for s in samples), 1),
            "slope_mb_per_min": common.rounded(slope_mb_per_min(samples, warmup), 3),
            "slope_after_seconds": warmup,
        },
        "fds": {
            "start": samples[0]["fds"] if samples else None,
            "end": end["fds"],
            "max": max(s["fds"] for s in samples),
        },
        "threads": {"start": samples[0]["threads"] if samples else None, "end": end["threads"]},
        "sidecar_cpu_seconds": common.rounded(end["cpu_s"], 1),
        "per_minute": per_minute,
        "samples": [{k: common.rounded(v, 2) for k, v in s.items()} for s in samples],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    env_minutes = float(os.environ.get("AIGUARD_SOAK_MINUTES", DEFAULT_MINUTES))
    ap.add_argument("--minutes", type=float, default=env_minutes)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args(argv)
    minutes = min(max(args.minutes, 0.25), MAX_MINUTES)
    print(f"soak: {minutes:g} min, {args.concurrency} clients, faults in ~{FAULT_RATE:.0%}")
    doc = asyncio.run(run(minutes, args.concurrency, keep=args.keep))
    doc["machine"] = common.machine()
    path = common.write_results(NAME, doc, out=args.out)
    mem, fds = doc["memory"], doc["fds"]
    print(
        common.table(
            [
                ["requests", doc["requests"]],
                ["events at the collector", doc["events"]],
                ["events == requests", doc["events_equal_requests"]],
                [
                    "RSS start / end / max (MB)",
                    f"{mem['rss_start_mb']} / {mem['rss_end_mb']} / {mem['rss_max_mb']}",
                ],
                ["RSS slope (MB/min, after warm-up)", mem["slope_mb_per_min"]],
                ["fds start / end / max", f"{fds['start']} / {fds['end']} / {fds['max']}"],
                ["statuses", doc["statuses"]],
                ["faults injected", sum(doc["faults_injected"].values())],
            ],
            ["soak", "value"],
        )
    )
    for m in doc["per_minute"]:
        lat, tt = m["latency_ms"], m["stream_ttfb_ms"]
        print(
            f"  minute {m['minute']}: p50 {lat.get('p50')} ms p99 {lat.get('p99')} ms "
            f"(n={lat.get('n')}); stream TTFB p50 {tt.get('p50')} ms p99 {tt.get('p99')} ms"
        )
    print(f"wrote {path}")
    ok = doc["events_equal_requests"] and not doc["chain_problems"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
