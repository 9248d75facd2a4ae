"""The sidecar as a proxy: what it adds over calling the provider directly, next to Portkey.

In one run, against the same provider stand-in (``tests/harness/standin.py``, plain HTTP):

* ``direct``            — the load generator calls the stand-in itself;
* ``sidecar``           — through ``aiguard-sidecar`` (the CLI, default log level): one OpenAI
  provider, one route, one access rule allowing the workload's ServiceAccount, no NER; the
  policy's default guardrails run (input: PII patterns, secrets, prompt injection; output: PII
  patterns, secrets). No collector URL, so each request also gets its metadata line on stderr;
* ``sidecar-quietlog``  — the same with ``--log-level warning`` (2 KB only): the price of that
  per-request line;
* ``sidecar-noguard``   — the same with every default guardrail disabled (2 KB only): the
  proxy's own cost, apart from the guardrails';
* ``sidecar-guardrails``— input guardrails configured (PII patterns, secrets, injection, a deny
  keyword). Run only if the pipeline actually calls them: a canary keyword is sent first and
  must be blocked; otherwise the result says the guardrails are not wired and why;
* ``portkey``           — through Portkey's open-source gateway (npm ``@portkey-ai/gateway``
  pinned in ``benchmarks/portkey``, bound to 127.0.0.1 by ``portkey/start.mjs``) with
  ``x-portkey-provider: openai`` and ``x-portkey-custom-host``;
* ``direct-tls`` / ``sidecar-tls`` (2 KB only) — the stand-in over TLS (a trustme test CA the
  sidecar verifies through its CA bundle); the client→sidecar leg stays plain, as in a pod.
  Same sidecar process, routed by a model alias (so the body is re-serialized upstream);
* ``aiohttp-bare``      — calibration: a bare aiohttp pass-through (read, POST upstream, reply;
  no parsing, policy, metrics or logs) pinned like the sidecar. On a shared, noisy box the
  sidecar's CPU per request over this one is the figure the noise bends least.

Each cell (a target, a body of 0.2/2/8 KB, 1 or 32 connections) is a 1 s warm-up and a 5 s wrk run
(a Lua script POSTs a chat-completion body; without wrk an aiohttp load generator stands in).
Cells of one body/connection pair run back to back, so neighbours' noise hits them alike.
The proxy is pinned to one core, wrk and the stand-ins to the other(s) (``taskset``).

Per cell: requests/s, p50/p90/p99 latency, *added* p50/p99 (minus the baseline: ``direct``, or
``direct-tls`` for the TLS row), the proxy's CPU µs per request (utime+stime of all its threads
from ``/proc/<pid>/stat``), how busy the proxy's core was (the proxy and anyone else), the
sidecar's own ``aiguard_proxy_overhead_seconds`` mean. Per proxy: RSS idle after start, after
load, peak. Streaming: time to first token (stand-in streaming with a per-chunk delay),
direct vs sidecar vs Portkey, one request at a time, interleaved. Then a cProfile of the
sidecar's event-loop thread under load (enabled/disabled by signal, so startup is excluded):
top functions by cumulative and own time, and own time grouped by module.

    python -m benchmarks.sidecar_proxy              # → benchmarks/results/sidecar_proxy.json
    python -m benchmarks.sidecar_proxy --duration 2 --no-profile   # quicker
    python -m benchmarks.sidecar_proxy --profile-only --keep        # iterate on the hot path
    python -m benchmarks.sidecar_proxy --ttft-only --out /tmp/t.json # streaming only
    python -m benchmarks.sidecar_proxy compare --ref HEAD           # this tree against a commit
    python -m benchmarks.sidecar_proxy rss          # idle RSS only (a few seconds, no load)
    hack/install-bench-tools.sh                      # wrk + the pinned Portkey gateway

``compare`` answers "did this change make the sidecar cheaper?" on a noisy box: the bare
aiohttp pass-through, the sidecar as committed at ``--ref`` (``git archive`` into a temporary
directory, run with ``PYTHONPATH`` pointing at it) and the sidecar of the working tree, all
pinned to the same core, take turns in short wrk runs (rotating the order each round); the
result is the median over rounds of each sidecar's CPU per request divided by the bare
pass-through's of the same round (``benchmarks/results/sidecar_proxy_compare.json``).

``rss`` starts the stand-in and the sidecar (default policy, then every guardrail off) as the
full run does and reads VmRSS 1 s after ``/readyz`` (``rss_idle_mb``), then after 20 requests
(``rss_after_mb``: any lazy work the first requests do is in it); ``--out`` writes the JSON.

Budgets (issue 5, item 11; one core, default policy, no NER): ≥ 2,000 req/s, added p50 ≤ 1 ms
and p99 ≤ 5 ms, idle RSS ≤ 60 MB, TTFT overhead ≤ 1 ms. The box may be shared: the load
average at start and end and each cell's core usage are in the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import http.client
import json
import os
import pstats
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchmarks import common

NAME = "sidecar_proxy"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PORTKEY_DIR = HERE / "portkey"
RESULTS_DIR = HERE / "results"
PORTKEY_START = PORTKEY_DIR / "start.mjs"
PORTKEY_BUILD = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build"

REAL_KEY = "sk-bench-real-0123456789"
PLACEHOLDER_KEY = "sk-placeholder-the-sidecar-drops-this"
MODEL = "gpt-4o"
MODEL_TLS = "gpt-4o-tls"
MODEL_STREAM = "gpt-4o-stream"
CANARY = "aiguardbenchcanary"
CHAT_PATH = "/v1/chat/completions"
SIDECAR_PATH = "/openai/v1/chat/completions"

BODIES = (200, 2048, 8192)
CONNECTIONS = (1, 32)
EXTRA_BODY = 2048  # the body size of the TLS, quiet-log rows

BUDGET = {
    "requests_per_second": 2000.0,
    "added_p50_ms": 1.0,
    "added_p99_ms": 5.0,
    "idle_rss_mb": 60.0,
    "ttft_overhead_ms": 1.0,
}


# ── request bodies ───────────────────────────────────────────────────────────────────────────

_TEXT = (
    "the quarterly report shows revenue growth in every region while operating costs stayed "
    "flat please summarise the main drivers and list three risks for the next quarter with "
    "short explanations for a busy executive audience"
)
_WORDS = _TEXT.split(" ")


def _filler(n: int, offset: int = 0) -> str:
    out: list[str] = []
    size = 0
    i = offset
    while size < n:
        w = _WORDS[i % len(_WORDS)]
        out.append(w)
        size += len(w) + 1
        i += 1
    return " ".join(out)[:n]


# The last user turn starts with this; the load generators replace the digits with a counter,
# so that turn differs in every request while the system prompt and the earlier turns repeat,
# as a chat client resends them (caches keyed by text cannot make every request a hit).
UNIQUE_MARK: Final = "req-000000"


def chat_body(
    size: int,
    *,
    model: str = MODEL,
    stream: bool = False,
    max_tokens: int = 32,
    unique: bool = True,
) -> bytes:
    """An OpenAI chat-completion request of exactly ``size`` bytes (when ``size`` exceeds the
    empty envelope): a system prompt and alternating turns of ~1 KB, ending with the user,
    whose turn starts with :data:`UNIQUE_MARK`."""
    turns = max(1, round(size / 1024))
    if turns % 2 == 0:
        turns += 1
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are concise."}]
    for i in range(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": ""})
    doc: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if stream:
        doc["stream"] = True

    def dump() -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    room = max(size - len(dump()), turns)
    share, extra = divmod(room, turns)
    for i in range(turns):
        messages[1 + i]["content"] = _filler(share + (1 if i < extra else 0), offset=i * 7)
    if unique:  # (the stand-in echoes the prompt: TTFT bodies leave the digits out)
        last = messages[-1]["content"]
        messages[-1]["content"] = (UNIQUE_MARK + " " + last)[: max(len(last), len(UNIQUE_MARK) + 1)]
    return dump()


def numbered(body: bytes, n: int) -> bytes:
    """``body`` with its :data:`UNIQUE_MARK` numbered ``n`` (same length)."""
    return body.replace(UNIQUE_MARK.encode(), f"req-{n % 1_000_000:06d}".encode(), 1)


# ── processes ────────────────────────────────────────────────────────────────────────────────


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Everything this benchmark starts; stopped (by pid, never by name) at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(self, name: str, cmd: Sequence[str], *, env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        fh = log.open("wb")
        popen = subprocess.Popen(
            list(cmd),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        fh.close()
        p = Proc(name, popen, log)
        self.procs.append(p)
        return p

    def stop(self, p: Proc, timeout: float = 10.0) -> None:
        if p.popen.poll() is None:
            p.popen.terminate()
            try:
                p.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(5)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)


def wait_tcp(port: int, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} not listening on {port} after {timeout}s:\n{proc.tail()}")


# ── the stand-in (a subprocess: ``python -m benchmarks.sidecar_proxy standin``) ──────────────


def standin_main(argv: Sequence[str]) -> int:
    """The provider stand-in for load: like ``python -m tests.harness.standin`` but it forgets
    recorded requests every half second (the stand-in keeps every request it served, bodies
    included: gigabytes over a benchmark)."""
    ap = argparse.ArgumentParser(prog="sidecar_proxy standin")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--openai-key", required=True)
    ap.add_argument("--chunk-delay", type=float, default=0.0)
    ap.add_argument("--stream-chunks", type=int, default=4)
    args = ap.parse_args(argv)
    from tests.harness.standin import ProviderStandIn

    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)

    async def serve() -> None:
        standin = ProviderStandIn(
            port=args.port,
            ssl_context=context,
            openai_keys=[args.openai_key],
            chunk_delay=args.chunk_delay,
            stream_chunks=args.stream_chunks,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with standin:
            print(f"stand-in on {standin.url}", flush=True)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                standin.requests.clear()

    asyncio.run(serve())
    return 0


# ── the calibration proxy (``python -m benchmarks.sidecar_proxy passthrough``) ──────────────


def passthrough_main(argv: Sequence[str]) -> int:
    """The floor a Python proxy on aiohttp can reach: read the body, POST it upstream with the
    real key through one pooled ``ClientSession``, return the reply. No parsing, no policy,
    no metrics, no logs. It runs in the same conditions as the sidecar, so the sidecar's CPU
    per request over this one is a ratio a noisy box cannot skew much."""
    ap = argparse.ArgumentParser(prog="sidecar_proxy passthrough")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--upstream", required=True, help="e.g. http://127.0.0.1:PORT/v1/chat/completions"
    )
    ap.add_argument("--key", required=True)
    ap.add_argument("--stream-upstream", help="where streamed requests go (default: --upstream)")
    args = ap.parse_args(argv)
    import aiohttp
    from aiohttp import web

    async def serve() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024))
        headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            if b'"stream":true' in body:  # relayed chunk by chunk: the TTFT floor of a relay
                url = args.stream_upstream or args.upstream
                async with session.post(url, data=body, headers=headers) as r:
                    out = web.StreamResponse(
                        status=r.status, headers={"Content-Type": r.content_type}
                    )
                    await out.prepare(request)
                    async for chunk in r.content.iter_any():
                        await out.write(chunk)
                    await out.write_eof()
                    return out
            async with session.post(args.upstream, data=body, headers=headers) as r:
                data = await r.read()
                return web.Response(status=r.status, body=data, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
        await session.close()

    asyncio.run(serve())
    return 0


# ── the profiled sidecar (``python -m benchmarks.sidecar_proxy profiled-sidecar``) ───────────


def profiled_sidecar_main(argv: Sequence[str]) -> int:
    """``aiguard-sidecar`` itself (``aiguard_sidecar.main.main``), with cProfile switched on by
    SIGUSR1 and off (stats written to ``--out``) by SIGUSR2. The event loop runs in the main
    thread, where signal handlers run, so the profile covers the loop's thread only (not the
    log-writing thread)."""
    ap = argparse.ArgumentParser(prog="sidecar_proxy profiled-sidecar")
    ap.add_argument("--out", required=True)
    args, rest = ap.parse_known_args(argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    # CPU time of the loop's thread, not wall time: time spent descheduled (a busy shared core)
    # or waiting for the GIL (the log thread) is not charged to whatever function was running.
    prof = cProfile.Profile(time.thread_time)

    def on(signum: int, frame: object) -> None:
        prof.enable()

    def off(signum: int, frame: object) -> None:
        prof.disable()
        prof.dump_stats(args.out)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    from aiguard_sidecar.main import main as sidecar_main

    return sidecar_main(rest)


# ── load generation ──────────────────────────────────────────────────────────────────────────

_LUA = """\
local f = assert(io.open({body_file}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
{headers}
-- number the last user turn of each request (chat_body's UNIQUE_MARK), if the body has one
local head, tail = wrk.body:match("^(.-)req%-000000(.*)$")
if head then
  local counter = 0
  request = function()
    counter = counter + 1
    return wrk.format(nil, nil, nil, head .. string.format("req-%06d", counter % 1000000) .. tail)
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nAIGUARD_LOAD {{"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,' ..
    '"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,"p50":%.1f,"p90":%.1f,' ..
    '"p99":%.1f,"max":%.1f,"mean":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def _lua_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for ASCII


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int
    error_detail: dict[str, int]
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def _parse_load(out: str) -> LoadResult:
    for line in out.splitlines():
        if line.startswith("AIGUARD_LOAD "):
            d = json.loads(line.split(" ", 1)[1])
            detail = {k: int(d[k]) for k in ("connect", "read", "write", "status", "timeout")}
            return LoadResult(
                requests=int(d["requests"]),
                seconds=d["duration_us"] / 1e6,
                errors=sum(detail.values()),
                error_detail={k: v for k, v in detail.items() if v},
                p50_us=d["p50"],
                p90_us=d["p90"],
                p99_us=d["p99"],
                max_us=d["max"],
                mean_us=d["mean"],
            )
    raise RuntimeError(f"load generator printed no result:\n{out[-2000:]}")


class LoadGen:
    """wrk (Lua script for the POST body) or, without wrk, the aiohttp generator below."""

    def __init__(self, workdir: Path, prefer_wrk: bool = True) -> None:
        self.workdir = workdir
        self.wrk = shutil.which("wrk") if prefer_wrk else None
        self.name = "wrk" if self.wrk else "aiohttp (benchmarks.sidecar_proxy loadgen)"
        if self.wrk:
            v = subprocess.run([self.wrk, "--version"], capture_output=True, text=True)
            self.version = (
                (v.stdout or v.stderr).splitlines()[0].strip() if (v.stdout or v.stderr) else "wrk"
            )
        else:
            self.version = "aiohttp"

    def script(self, tag: str, body: bytes, headers: dict[str, str]) -> Path:
        body_file = self.workdir / f"body-{tag}.json"
        body_file.write_bytes(body)
        lines = [f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers.items()]
        lua = self.workdir / f"post-{tag}.lua"
        lua.write_text(_LUA.format(body_file=_lua_str(str(body_file)), headers="\n".join(lines)))
        return lua

    def run(self, url: str, script: Path, connections: int, seconds: float) -> LoadResult:
        if self.wrk:
            cmd = [
                self.wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ]
        else:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.sidecar_proxy",
                "loadgen",
                "--url",
                url,
                "--script",
                str(script),
                "--connections",
                str(connections),
                "--duration",
                str(seconds),
            ]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 60)
        if p.returncode != 0:
            raise RuntimeError(f"load generator failed ({p.returncode}): {p.stderr[-2000:]}")
        return _parse_load(p.stdout)


def loadgen_main(argv: Sequence[str]) -> int:
    """The fallback load generator: closed loop, one connection per worker, reads the body and
    headers from the same Lua script wrk would use. Prints the same ``AIGUARD_LOAD`` line."""
    ap = argparse.ArgumentParser(prog="sidecar_proxy loadgen")
    ap.add_argument("--url", required=True)
    ap.add_argument("--script", type=Path, required=True)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args(argv)
    import aiohttp

    lua = args.script.read_text()
    body_file = json.loads(lua.split("io.open(", 1)[1].split(", ", 1)[0])
    body = Path(body_file).read_bytes()
    headers: dict[str, str] = {}
    for line in lua.splitlines():
        if line.startswith("wrk.headers["):
            k = json.loads(line[len("wrk.headers[") : line.index("]")])
            headers[k] = json.loads(line.split("= ", 1)[1])

    async def run() -> dict[str, Any]:
        lat: list[float] = []
        errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
        nbytes = 0
        conn = aiohttp.TCPConnector(limit=args.connections)
        async with aiohttp.ClientSession(connector=conn) as session:
            t_start = time.perf_counter()
            deadline = t_start + args.duration

            sent = [0]

            async def worker() -> None:
                nonlocal nbytes
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    sent[0] += 1
                    try:
                        async with session.post(
                            args.url, data=numbered(body, sent[0]), headers=headers, ssl=False
                        ) as r:
                            data = await r.read()
                            nbytes += len(data)
                            if r.status >= 400:
                                errors["status"] += 1
                    except (aiohttp.ClientError, OSError):
                        errors["read"] += 1
                        continue
                    lat.append((time.perf_counter() - t0) * 1e6)

            await asyncio.gather(*(worker() for _ in range(args.connections)))
            elapsed = time.perf_counter() - t_start
        s = common.summarize(lat)
        return {
            "requests": len(lat) + errors["status"],
            "duration_us": elapsed * 1e6,
            "bytes": nbytes,
            **errors,
            "p50": s.get("p50", 0),
            "p90": s.get("p90", 0),
            "p99": s.get("p99", 0),
            "max": s.get("max", 0),
            "mean": s.get("mean", 0),
        }

    print("AIGUARD_LOAD " + json.dumps(asyncio.run(run())))
    return 0


# ── targets ──────────────────────────────────────────────────────────────────────────────────


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    model: str
    baseline: str | None  # the target added latency is measured against
    pid: int | None  # the proxy process (None: direct)
    upstream_pid: int
    bodies: tuple[int, ...]
    admin_port: int | None = None  # sidecars: for /metrics
    note: str = ""


def http_post(
    url: str, body: bytes, headers: dict[str, str], timeout: float = 10
) -> tuple[int, bytes]:
    u = url.split("://", 1)[1]
    hostport, path = u.split("/", 1)
    host, port = hostport.rsplit(":", 1)
    if url.startswith("https"):
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host,
            int(port),
            timeout=timeout,
            context=ssl._create_unverified_context(),  # noqa: S323 - benchmark check only
        )
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(
            "POST", "/" + path, body=body, headers={**headers, "Content-Type": "application/json"}
        )
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def overhead_metric(admin_port: int | None) -> tuple[float, float] | None:
    """``(sum, count)`` of the sidecar's ``aiguard_proxy_overhead_seconds`` histogram."""
    if admin_port is None:
        return None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except OSError:
        return None
    total = count = None
    for line in text.splitlines():
        if line.startswith("aiguard_proxy_overhead_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("aiguard_proxy_overhead_seconds_count"):
            count = float(line.split()[-1])
    return (total, count) if total is not None and count is not None else None


# ── the environment of one run ───────────────────────────────────────────────────────────────


def policy_doc(
    plain_port: int,
    tls_port: int | None,
    stream_port: int | None,
    *,
    guardrails: bool = False,
    no_guardrails: bool = False,
) -> dict[str, Any]:
    providers: list[dict[str, Any]] = [
        {
            "name": "openai",
            "type": "openai",
            "baseURL": f"http://127.0.0.1:{plain_port}/v1",
            "allowPlaintext": True,
            "apiKeySecretRef": {"name": "openai"},
        }
    ]
    routes: list[dict[str, Any]] = [
        {"name": "gpt", "models": [MODEL], "targets": [{"provider": "openai"}]}
    ]
    if tls_port is not None:
        providers.append(
            {
                "name": "openai-tls",
                "type": "openai",
                "baseURL": f"https://127.0.0.1:{tls_port}/v1",
                "apiKeySecretRef": {"name": "openai"},
                "tls": {"caSecretRef": {"name": "bench-ca", "key": "ca.crt"}},
            }
        )
        routes.append(
            {
                "name": "gpt-tls",
                "models": [MODEL_TLS],
                "targets": [{"provider": "openai-tls", "model": MODEL}],
            }
        )
    if stream_port is not None:
        providers.append(
            {
                "name": "openai-stream",
                "type": "openai",
                "baseURL": f"http://127.0.0.1:{stream_port}/v1",
                "allowPlaintext": True,
                "apiKeySecretRef": {"name": "openai"},
            }
        )
        routes.append(
            {
                "name": "gpt-stream",
                "models": [MODEL_STREAM],
                "targets": [{"provider": "openai-stream", "model": MODEL}],
            }
        )
    spec: dict[str, Any] = {
        "providers": providers,
        "routes": routes,
        "access": {
            "rules": [
                {
                    "name": "bench-app",
                    "subjects": {"serviceAccounts": ["bench-app"]},
                    "models": ["gpt-*"],
                    "operations": ["chat"],
                }
            ]
        },
    }
    if no_guardrails:
        off = {"enabled": False}
        spec["guardrails"] = {
            "input": {"pii": off, "secrets": off, "promptInjection": off},
            "output": {"pii": off, "secrets": off},
        }
    if guardrails:
        spec["guardrails"] = {
            "input": {
                "pii": {"enabled": True, "ner": {"enabled": False}},
                "secrets": {"enabled": True},
                "promptInjection": {"enabled": True},
                "deny": {"keywords": [CANARY], "action": "block"},
            }
        }
    return {
        "apiVersion": "aiguard.dev/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": "bench", "namespace": "bench"},
        "spec": spec,
    }


WORKLOAD_ENV = {
    "AIGUARD_POD_NAMESPACE": "bench",
    "AIGUARD_POD_SERVICE_ACCOUNT": "bench-app",
    "AIGUARD_POD_NAME": "bench-pod",
    # as the image runs the sidecar (Dockerfile.sidecar): docstrings and asserts not loaded
    "PYTHONOPTIMIZE": "2",
}


def sidecar_command() -> list[str]:
    script = Path(sys.executable).parent / "aiguard-sidecar"
    return [str(script)] if script.exists() else [sys.executable, "-m", "aiguard_sidecar.main"]


@dataclass
class ProxyInfo:
    name: str
    pid: int
    startup_seconds: float
    rss_idle_mb: float
    cpu_startup_seconds: float
    rss_after_mb: float | None = None
    rss_peak_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="aiguard-bench-proxy-"))
        self.procs = Processes(self.workdir)
        self.cores = common.plan_cores()
        self.loadgen = LoadGen(self.workdir, prefer_wrk=not args.no_wrk)
        self.targets: dict[str, Target] = {}
        self.proxies: dict[str, ProxyInfo] = {}
        self.notes: list[str] = []
        self.guardrails: dict[str, Any] = {}
        self.secrets = self.workdir / "secrets"
        self.tls_files: tuple[Path, Path] | None = None
        self._help: str | None = None

    # setup ───────────────────────────────────────────────────────────────────────────────────

    def pin(self, cmd: Sequence[str]) -> list[str]:
        return common.taskset(cmd, self.cores.subject, self.cores.pinned)

    def start_standin(
        self, name: str, *, tls: bool = False, chunk_delay: float = 0.0
    ) -> tuple[int, Proc]:
        port = common.free_port()
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.sidecar_proxy",
            "standin",
            "--port",
            str(port),
            "--openai-key",
            REAL_KEY,
            "--chunk-delay",
            str(chunk_delay),
        ]
        if tls:
            assert self.tls_files is not None
            cmd += ["--tls-cert", str(self.tls_files[0]), "--tls-key", str(self.tls_files[1])]
        p = self.procs.start(name, cmd)  # inherits this process's (load-core) affinity
        wait_tcp(port, p)
        return port, p

    def make_tls(self) -> bool:
        try:
            import trustme
        except ImportError:
            self.notes.append("TLS rows skipped: trustme (dev extra) is not installed")
            return False
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        (self.secrets / "bench-ca").mkdir(parents=True, exist_ok=True)
        (self.secrets / "bench-ca" / "ca.crt").write_bytes(ca.cert_pem.bytes())
        chain = self.workdir / "server.crt"
        key = self.workdir / "server.key"
        chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        key.write_bytes(cert.private_key_pem.bytes())
        self.tls_files = (chain, key)
        return True

    def start_sidecar(
        self,
        name: str,
        policy: dict[str, Any],
        *,
        log_level: str = "info",
        profile_out: Path | None = None,
    ) -> tuple[int, int, Proc, ProxyInfo]:
        policy_file = self.workdir / f"{name}.policy.yaml"
        policy_file.write_text(json.dumps(policy, indent=1))  # JSON is YAML
        port, admin = common.free_port(), common.free_port()
        sc_args = [
            "--policy",
            str(policy_file),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin}",
            "--secrets-dir",
            str(self.secrets),
            "--log-level",
            log_level,
            "--drain-seconds",
            "1",
        ]
        if "--spool-dir" in self.sidecar_flags():  # audit spool: keep it in the work dir
            sc_args += ["--spool-dir", str(self.workdir / f"spool-{name}")]
        if profile_out is None:
            cmd = [*sidecar_command(), *sc_args]
        else:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.sidecar_proxy",
                "profiled-sidecar",
                "--out",
                str(profile_out),
                "--",
                *sc_args,
            ]
        t0 = time.monotonic()
        p = self.procs.start(name, self.pin(cmd), env=WORKLOAD_ENV)
        try:
            common.wait_http("127.0.0.1", admin, "/readyz", proc=p.popen, timeout=60)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{name} did not become ready: {e}\n{p.tail()}") from e
        startup = time.monotonic() - t0
        time.sleep(1.0)  # idle: let startup allocations settle
        info = ProxyInfo(
            name=name,
            pid=p.pid,
            startup_seconds=round(startup, 2),
            rss_idle_mb=round(common.rss_bytes(p.pid) / 2**20, 1),
            cpu_startup_seconds=round(common.cpu_seconds(p.pid), 2),
        )
        return port, admin, p, info

    def sidecar_flags(self) -> str:
        """``aiguard-sidecar --help`` (flags differ between versions of the CLI)."""
        if self._help is None:
            p = subprocess.run(
                [*sidecar_command(), "--help"], capture_output=True, text=True, cwd=ROOT
            )
            self._help = p.stdout
        return self._help

    def start_portkey(self, name: str = "portkey") -> tuple[int, Proc, ProxyInfo] | None:
        node = shutil.which("node")
        if node is None or not (PORTKEY_BUILD / "start-server.js").exists():
            self.notes.append(
                "Portkey rows skipped: run hack/install-bench-tools.sh (node + npm ci in "
                "benchmarks/portkey)"
            )
            return None
        port = common.free_port()
        t0 = time.monotonic()
        p = self.procs.start(
            name, self.pin([node, str(PORTKEY_START), f"--port={port}", "--headless"])
        )
        common.wait_http("127.0.0.1", port, "/", proc=p.popen, timeout=60)
        startup = time.monotonic() - t0
        time.sleep(1.0)
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True
        ).stdout
        info = ProxyInfo(
            name=name,
            pid=p.pid,
            startup_seconds=round(startup, 2),
            rss_idle_mb=round(common.rss_bytes(p.pid) / 2**20, 1),
            cpu_startup_seconds=round(common.cpu_seconds(p.pid), 2),
            extra={
                "version": _portkey_version(),
                "node": subprocess.run(
                    [node, "--version"], capture_output=True, text=True
                ).stdout.strip(),
                "listening": " ".join(listening.split()[3:4]) if listening else "?",
            },
        )
        return port, p, info

    def check(self, t: Target) -> None:
        """One request must come back 200 from the stand-in (the real key reached it)."""
        status, body = http_post(t.url, chat_body(200, model=t.model), t.headers)
        if status != 200 or b"chatcmpl-standin" not in body:
            raise RuntimeError(f"{t.name}: check request failed: HTTP {status} {body[:300]!r}")

    def setup(self) -> None:
        a = self.args
        if self.cores.pinned:
            common.pin_self(self.cores.load)
        else:
            self.notes.append(self.cores.note)
        (self.secrets / "openai").mkdir(parents=True)
        (self.secrets / "openai" / "api-key").write_text(REAL_KEY)
        tls = not a.no_tls and self.make_tls()

        plain_port, plain = self.start_standin("standin")
        tls_port, tls_proc = self.start_standin("standin-tls", tls=True) if tls else (None, None)
        stream_port, _ = self.start_standin("standin-stream", chunk_delay=a.chunk_delay)
        self.stream_port = stream_port
        self.plain_port = plain_port

        direct_headers = {"Authorization": f"Bearer {REAL_KEY}", "Content-Type": "application/json"}
        side_headers = {
            "Authorization": f"Bearer {PLACEHOLDER_KEY}",
            "Content-Type": "application/json",
        }
        self.side_headers = side_headers
        self.direct_headers = direct_headers
        self.add(
            Target(
                "direct",
                f"http://127.0.0.1:{plain_port}{CHAT_PATH}",
                direct_headers,
                MODEL,
                None,
                None,
                plain.pid,
                a.bodies,
            )
        )
        if tls_port is not None and tls_proc is not None:
            self.add(
                Target(
                    "direct-tls",
                    f"https://127.0.0.1:{tls_port}{CHAT_PATH}",
                    direct_headers,
                    MODEL,
                    None,
                    None,
                    tls_proc.pid,
                    (EXTRA_BODY,),
                )
            )

        policy = policy_doc(plain_port, tls_port, stream_port)
        port, admin, _, info = self.start_sidecar("sidecar", policy)
        self.proxies["sidecar"] = info
        self.sidecar_url = f"http://127.0.0.1:{port}{SIDECAR_PATH}"
        self.add(
            Target(
                "sidecar",
                self.sidecar_url,
                side_headers,
                MODEL,
                "direct",
                info.pid,
                plain.pid,
                a.bodies,
                admin,
            )
        )
        if tls_port is not None and tls_proc is not None:
            self.add(
                Target(
                    "sidecar-tls",
                    self.sidecar_url,
                    side_headers,
                    MODEL_TLS,
                    "direct-tls",
                    info.pid,
                    tls_proc.pid,
                    (EXTRA_BODY,),
                    admin,
                    note="same sidecar process; upstream over TLS 1.3 (verified)",
                )
            )

        if not a.no_quietlog:
            qport, qadmin, _, qinfo = self.start_sidecar(
                "sidecar-quietlog", policy_doc(plain_port, None, None), log_level="warning"
            )
            self.proxies["sidecar-quietlog"] = qinfo
            self.add(
                Target(
                    "sidecar-quietlog",
                    f"http://127.0.0.1:{qport}{SIDECAR_PATH}",
                    side_headers,
                    MODEL,
                    "direct",
                    qinfo.pid,
                    plain.pid,
                    (EXTRA_BODY,),
                    qadmin,
                    note="--log-level warning: no per-request audit log line",
                )
            )

        if not a.no_noguard:
            nport, nadmin, _, ninfo = self.start_sidecar(
                "sidecar-noguard", policy_doc(plain_port, None, stream_port, no_guardrails=True)
            )
            self.noguard_url = f"http://127.0.0.1:{nport}{SIDECAR_PATH}"
            self.proxies["sidecar-noguard"] = ninfo
            self.add(
                Target(
                    "sidecar-noguard",
                    f"http://127.0.0.1:{nport}{SIDECAR_PATH}",
                    side_headers,
                    MODEL,
                    "direct",
                    ninfo.pid,
                    plain.pid,
                    (EXTRA_BODY,),
                    nadmin,
                    note="every default guardrail disabled: the proxy's own cost",
                )
            )

        self.setup_guardrails(plain_port, plain.pid, side_headers)

        if not a.no_bare:
            bport = common.free_port()
            t0 = time.monotonic()
            bp = self.procs.start(
                "aiohttp-bare",
                self.pin(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.sidecar_proxy",
                        "passthrough",
                        "--port",
                        str(bport),
                        "--upstream",
                        f"http://127.0.0.1:{plain_port}{CHAT_PATH}",
                        "--stream-upstream",
                        f"http://127.0.0.1:{stream_port}{CHAT_PATH}",
                        "--key",
                        REAL_KEY,
                    ]
                ),
            )
            self.bare_port = bport
            wait_tcp(bport, bp)
            time.sleep(1.0)
            self.proxies["aiohttp-bare"] = ProxyInfo(
                name="aiohttp-bare",
                pid=bp.pid,
                startup_seconds=round(time.monotonic() - t0 - 1.0, 2),
                rss_idle_mb=round(common.rss_bytes(bp.pid) / 2**20, 1),
                cpu_startup_seconds=round(common.cpu_seconds(bp.pid), 2),
            )
            self.add(
                Target(
                    "aiohttp-bare",
                    f"http://127.0.0.1:{bport}{CHAT_PATH}",
                    side_headers,
                    MODEL,
                    "direct",
                    bp.pid,
                    plain.pid,
                    a.bodies,
                    note="calibration: bare aiohttp pass-through (no parsing/policy/metrics/logs)",
                )
            )

        if not a.no_portkey:
            started = self.start_portkey()
            if started is not None:
                pk_port, _, pk_info = started
                self.proxies["portkey"] = pk_info
                self.portkey_port = pk_port
                pk_headers = {
                    "Authorization": f"Bearer {REAL_KEY}",
                    "Content-Type": "application/json",
                    "x-portkey-provider": "openai",
                    "x-portkey-custom-host": f"http://127.0.0.1:{plain_port}/v1",
                }
                self.add(
                    Target(
                        "portkey",
                        f"http://127.0.0.1:{pk_port}{CHAT_PATH}",
                        pk_headers,
                        MODEL,
                        "direct",
                        pk_info.pid,
                        plain.pid,
                        a.bodies,
                    )
                )
        for t in self.targets.values():
            self.check(t)

    def setup_guardrails(self, plain_port: int, upstream_pid: int, headers: dict[str, str]) -> None:
        """Start a sidecar whose policy configures input guardrails and a deny keyword; send the
        keyword. Blocked (400): the guardrails run, benchmark them. Served (200): not wired."""
        port, admin, proc, info = self.start_sidecar(
            "sidecar-guardrails", policy_doc(plain_port, None, None, guardrails=True)
        )
        url = f"http://127.0.0.1:{port}{SIDECAR_PATH}"
        body = json.dumps(
            {
                "model": MODEL,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"please repeat {CANARY} back to me"}],
            }
        ).encode()
        status, _ = http_post(url, body, headers)
        benign_status, _ = http_post(url, chat_body(200), headers)
        wired = status == 400
        self.guardrails = {
            "wired": wired,
            "probe": f"deny keyword {CANARY!r} in the prompt → HTTP {status}; "
            f"benign prompt → HTTP {benign_status}",
            "policy": policy_doc(0, None, None, guardrails=True)["spec"]["guardrails"],
        }
        if not wired:
            self.guardrails["reason"] = (
                "the sidecar CLI builds SidecarServer(settings) without a guardrails factory, so "
                "app.create_app uses hooks.no_guardrails and pipeline._check_input awaits "
                "NoGuardrails.check_input (always ALLOW); the guardrails engine "
                "(guardrails/engine.py: build_engines) is not connected to hooks.Guardrails. "
                "Configured guardrails cost nothing today; the 'sidecar' rows will grow when "
                "they are wired."
            )
            self.notes.append("input guardrails are NOT wired into the pipeline: row skipped")
            self.procs.stop(proc)
            return
        if benign_status != 200:
            self.notes.append(
                f"guardrails sidecar answers a benign prompt with {benign_status}: row skipped"
            )
            self.procs.stop(proc)
            return
        self.proxies["sidecar-guardrails"] = info
        self.add(
            Target(
                "sidecar-guardrails",
                url,
                headers,
                MODEL,
                "direct",
                info.pid,
                upstream_pid,
                self.args.bodies,
                admin,
                note="input guardrails: PII patterns, secrets, injection, deny keyword; no NER",
            )
        )

    def add(self, t: Target) -> None:
        self.targets[t.name] = t

    # measuring ───────────────────────────────────────────────────────────────────────────────

    def cell(self, t: Target, size: int, conns: int) -> dict[str, Any]:
        a = self.args
        tag = f"{t.name}-{size}"
        script = self.workdir / f"post-{tag}.lua"
        if not script.exists():
            script = self.loadgen.script(tag, chat_body(size, model=t.model), t.headers)
        if a.warmup > 0:
            self.loadgen.run(t.url, script, conns, a.warmup)
        ov0 = overhead_metric(t.admin_port)
        load0 = os.getloadavg()[0]
        core0 = common.CoreUsage.snapshot()
        cpu0 = common.cpu_seconds(t.pid) if t.pid else None
        thr0 = common.thread_cpu_seconds(t.pid) if t.pid else {}
        up0 = common.cpu_seconds(t.upstream_pid)
        w0 = time.monotonic()
        r = self.loadgen.run(t.url, script, conns, a.duration)
        wall = time.monotonic() - w0
        cpu1 = common.cpu_seconds(t.pid) if t.pid else None
        thr1 = common.thread_cpu_seconds(t.pid) if t.pid else {}
        up1 = common.cpu_seconds(t.upstream_pid)
        core1 = common.CoreUsage.snapshot()
        ov1 = overhead_metric(t.admin_port)
        n = max(r.requests, 1)
        out: dict[str, Any] = {
            "target": t.name,
            "body_bytes": size,
            "connections": conns,
            "requests": r.requests,
            "seconds": common.rounded(r.seconds, 2),
            "rps": common.rounded(r.rps, 1),
            "p50_ms": common.rounded(r.p50_us / 1000),
            "p90_ms": common.rounded(r.p90_us / 1000),
            "p99_ms": common.rounded(r.p99_us / 1000),
            "max_ms": common.rounded(r.max_us / 1000),
            "mean_ms": common.rounded(r.mean_us / 1000),
            "errors": r.errors,
            "error_detail": r.error_detail or None,
            "proxy_cpu_us_per_req": None,
            "proxy_cpu_util": None,
            "implied_rps_per_core": None,
            "upstream_cpu_us_per_req": common.rounded((up1 - up0) * 1e6 / n, 1),
            "proxy_core_busy": common.rounded(
                core1.busy_fraction_since(core0, self.cores.subject), 3
            ),
            "load_core_busy": common.rounded(core1.busy_fraction_since(core0, self.cores.load), 3),
            "loadavg_1m": round(load0, 2),
        }
        if cpu0 is not None and cpu1 is not None:
            used = cpu1 - cpu0
            out["proxy_cpu_us_per_req"] = common.rounded(used * 1e6 / n, 1)
            out["proxy_cpu_util"] = common.rounded(used / wall, 3)
            out["implied_rps_per_core"] = common.rounded(n / used, 0) if used > 0 else None
            busy = out["proxy_core_busy"] or 0.0
            out["other_on_proxy_core"] = common.rounded(max(0.0, busy - used / wall), 3)
            assert t.pid is not None
            main = thr1.get(t.pid, 0.0) - thr0.get(t.pid, 0.0)
            others = sum(v - thr0.get(k, 0.0) for k, v in thr1.items() if k != t.pid)
            out["proxy_cpu_us_per_req_main_thread"] = common.rounded(main * 1e6 / n, 1)
            out["proxy_cpu_us_per_req_other_threads"] = common.rounded(others * 1e6 / n, 1)
            out["proxy_threads"] = len(thr1)
        if ov0 is not None and ov1 is not None and ov1[1] > ov0[1]:
            out["self_reported_overhead_ms"] = common.rounded(
                (ov1[0] - ov0[0]) / (ov1[1] - ov0[1]) * 1000
            )
        return out

    def matrix(self) -> list[dict[str, Any]]:
        order = [
            "direct",
            "aiohttp-bare",
            "sidecar",
            "sidecar-guardrails",
            "sidecar-quietlog",
            "sidecar-noguard",
            "portkey",
            "direct-tls",
            "sidecar-tls",
        ]
        cells: list[dict[str, Any]] = []
        sizes = sorted({s for t in self.targets.values() for s in t.bodies})
        total = sum(
            1
            for s in sizes
            for _ in self.args.connections
            for t in self.targets.values()
            if s in t.bodies
        )
        i = 0
        for size in sizes:
            for conns in self.args.connections:
                group: dict[str, dict[str, Any]] = {}
                for name in order:
                    t = self.targets.get(name)
                    if t is None or size not in t.bodies:
                        continue
                    i += 1
                    c = self.cell(t, size, conns)
                    group[name] = c
                    print(
                        f"  [{i:2d}/{total}] {name:<19} {size:>5} B  c={conns:<2}  "
                        f"{c['rps']:>8,.0f} req/s  p50 {c['p50_ms']:.2f} ms  "
                        f"p99 {c['p99_ms']:.2f} ms"
                        + (
                            f"  cpu {c['proxy_cpu_us_per_req']:.0f} µs/req"
                            if c["proxy_cpu_us_per_req"]
                            else ""
                        )
                        + (f"  errors {c['errors']}" if c["errors"] else "")
                        + f"  load {c['loadavg_1m']}",
                        flush=True,
                    )
                for name, c in group.items():
                    base = self.targets[name].baseline
                    b = group.get(base) if base else None
                    if b is not None:
                        c["added_p50_ms"] = common.rounded(c["p50_ms"] - b["p50_ms"])
                        c["added_p99_ms"] = common.rounded(c["p99_ms"] - b["p99_ms"])
                        c["added_mean_ms"] = common.rounded(c["mean_ms"] - b["mean_ms"])
                    cells.append(c)
        return cells

    # streaming ───────────────────────────────────────────────────────────────────────────────

    def ttft(self) -> dict[str, Any]:
        a = self.args
        stream = self.stream_port
        targets: list[tuple[str, str, dict[str, str], bytes]] = [
            (
                "direct",
                f"http://127.0.0.1:{stream}{CHAT_PATH}",
                self.direct_headers,
                chat_body(a.ttft_body, stream=True, unique=False),
            ),
            (
                "sidecar",
                self.sidecar_url,
                self.side_headers,
                chat_body(a.ttft_body, model=MODEL_STREAM, stream=True, unique=False),
            ),
        ]
        if "aiohttp-bare" in self.proxies:  # the floor: a relay that does nothing else
            targets.append(
                (
                    "aiohttp-bare",
                    f"http://127.0.0.1:{self.bare_port}{CHAT_PATH}",
                    self.side_headers,
                    chat_body(a.ttft_body, stream=True, unique=False),
                )
            )
        if "sidecar-noguard" in self.proxies:  # the guardrails' share of the overhead
            targets.append(
                (
                    "sidecar-noguard",
                    self.noguard_url,
                    self.side_headers,
                    chat_body(a.ttft_body, model=MODEL_STREAM, stream=True, unique=False),
                )
            )
        if "portkey" in self.proxies:
            targets.append(
                (
                    "portkey",
                    f"http://127.0.0.1:{self.portkey_port}{CHAT_PATH}",
                    {
                        **self.targets["portkey"].headers,
                        "x-portkey-custom-host": f"http://127.0.0.1:{stream}/v1",
                    },
                    chat_body(a.ttft_body, stream=True, unique=False),
                )
            )
        samples = asyncio.run(_ttft_samples(targets, a.ttft_requests, warmup=10))
        out: dict[str, Any] = {
            "requests_per_target": a.ttft_requests,
            "chunk_delay_ms": a.chunk_delay * 1000,
            "body_bytes": a.ttft_body,
            "connections": 1,
            "method": "one streaming request at a time per target, targets interleaved; TTFT = "
            "request sent → first SSE event with non-empty delta.content; TTFB = first body line",
            "targets": {},
        }
        nan = float("nan")

        def ms(stats: dict[str, float], key: str) -> float | None:
            return common.rounded(stats.get(key, nan) * 1000)

        d = common.summarize(samples["direct"]["ttft"])
        for name, s in samples.items():
            ttft = common.summarize(s["ttft"])
            row: dict[str, Any] = {
                "samples": len(s["ttft"]),
                "ttft_p50_ms": ms(ttft, "p50"),
                "ttft_p90_ms": ms(ttft, "p90"),
                "ttft_p99_ms": ms(ttft, "p99"),
                "ttfb_p50_ms": ms(common.summarize(s["ttfb"]), "p50"),
                "total_p50_ms": ms(common.summarize(s["total"]), "p50"),
                "errors": s["errors"],
            }
            if name != "direct" and "p50" in ttft and "p50" in d:
                row["ttft_overhead_p50_ms"] = common.rounded((ttft["p50"] - d["p50"]) * 1000)
                row["ttft_overhead_p90_ms"] = common.rounded((ttft["p90"] - d["p90"]) * 1000)
                # paired: each proxied request minus the direct one of the same round
                paired = sorted(
                    x - y for (i, x), (j, y) in _pairs(s["rounds"], samples["direct"]["rounds"])
                )
                if paired:
                    row["ttft_overhead_paired_p50_ms"] = common.rounded(
                        common.percentile(paired, 50) * 1000
                    )
            out["targets"][name] = row
        return out

    # profile ─────────────────────────────────────────────────────────────────────────────────

    def profile(self) -> dict[str, Any]:
        a = self.args
        out_file = self.workdir / "sidecar.prof"
        policy = policy_doc(
            self.plain_port,
            None,
            self.stream_port if a.profile_stream else None,
            no_guardrails=a.profile_no_guardrails,
        )
        port, _, proc, _ = self.start_sidecar("sidecar-profiled", policy, profile_out=out_file)
        url = f"http://127.0.0.1:{port}{SIDECAR_PATH}"
        body = (
            chat_body(a.profile_body, model=MODEL_STREAM, stream=True, unique=False)
            if a.profile_stream
            else chat_body(a.profile_body)
        )
        script = self.loadgen.script("profile", body, self.side_headers)
        self.loadgen.run(url, script, a.profile_connections, 1)  # warm-up, not profiled
        proc.popen.send_signal(signal.SIGUSR1)
        time.sleep(0.2)
        cpu0 = common.cpu_seconds(proc.pid)
        r = self.loadgen.run(url, script, a.profile_connections, a.profile_seconds)
        cpu1 = common.cpu_seconds(proc.pid)
        proc.popen.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not out_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        self.procs.stop(proc)
        if not out_file.exists():
            return {"error": "no profile written"}
        return summarize_profile(out_file, r, cpu1 - cpu0, a)


async def _ttft_samples(
    targets: list[tuple[str, str, dict[str, str], bytes]], n: int, warmup: int
) -> dict[str, dict[str, Any]]:
    import aiohttp

    res: dict[str, dict[str, Any]] = {
        name: {"ttft": [], "ttfb": [], "total": [], "rounds": [], "errors": 0}
        for name, *_ in targets
    }
    sessions = {
        name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for name, *_ in targets
    }
    try:
        for i in range(warmup + n):
            order = targets[i % len(targets) :] + targets[: i % len(targets)]
            for name, url, headers, body in order:
                t0 = time.perf_counter()
                ttfb = ttft = None
                try:
                    async with sessions[name].post(url, data=body, headers=headers) as resp:
                        if resp.status != 200:
                            raise RuntimeError(f"HTTP {resp.status}")
                        async for line in resp.content:
                            now = time.perf_counter()
                            if ttfb is None:
                                ttfb = now - t0
                            if ttft is None and line.startswith(b"data: {") and _has_content(line):
                                ttft = now - t0
                    total = time.perf_counter() - t0
                except (aiohttp.ClientError, RuntimeError, OSError):
                    if i >= warmup:
                        res[name]["errors"] += 1
                    continue
                if i >= warmup and ttft is not None and ttfb is not None:
                    res[name]["rounds"].append((i, ttft))
                    res[name]["ttft"].append(ttft)
                    res[name]["ttfb"].append(ttfb)
                    res[name]["total"].append(total)
    finally:
        for s in sessions.values():
            await s.close()
    return res


def _pairs(
    a: list[tuple[int, float]], b: list[tuple[int, float]]
) -> Iterator[tuple[tuple[int, float], tuple[int, float]]]:
    """Samples of the same round in both lists."""
    other = dict(b)
    for i, x in a:
        if i in other:
            yield (i, x), (i, other[i])


def _has_content(line: bytes) -> bool:
    try:
        doc = json.loads(line[6:])
        return bool(doc["choices"][0]["delta"].get("content"))
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def _area(filename: str) -> str:
    """Group a profiled function by where it lives."""
    f = filename.replace("\\", "/")
    if f.startswith("~") or f == "~":
        return "builtins/C"
    for marker in ("aiguard_sidecar/", "aiguard_api/"):
        if marker in f:
            rest = f.split(marker, 1)[1]
            return marker + rest
    if "/site-packages/" in f:
        pkg = f.split("/site-packages/", 1)[1]
        parts = pkg.split("/")
        return parts[0] + ("/" + parts[1] if len(parts) > 1 and parts[0] in ("aiohttp",) else "")
    if "/asyncio/" in f:
        return "asyncio (stdlib)"
    name = f.rsplit("/", 1)[-1]
    if "/json/" in f:
        return "json (stdlib)"
    if "/logging/" in f:
        return "logging (stdlib)"
    return f"{name} (stdlib)" if "/lib/python" in f else name


def _fn_label(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    f = filename.replace("\\", "/")
    for marker in ("aiguard_sidecar/", "aiguard_api/", "site-packages/"):
        if marker in f:
            f = (marker if marker != "site-packages/" else "") + f.split(marker, 1)[1]
            break
    else:
        f = f.rsplit("/", 1)[-1]
    return f"{f}:{line}({func})"


def summarize_profile(
    path: Path, r: LoadResult, cpu_seconds: float, a: argparse.Namespace
) -> dict[str, Any]:
    st = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = st.stats  # type: ignore[attr-defined]
    n = max(r.requests, 1)
    total_tt = sum(v[2] for v in raw.values())
    by_cum = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)
    by_tt = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)

    def row(kv: tuple[tuple[str, int, str], tuple[int, int, float, float, Any]]) -> dict[str, Any]:
        key, (_cc, nc, tt, ct, _) = kv
        return {
            "function": _fn_label(key),
            "calls_per_req": round(nc / n, 2),
            "cum_us_per_req": round(ct * 1e6 / n, 1),
            "own_us_per_req": round(tt * 1e6 / n, 1),
            "cum_share": round(ct / total_tt, 3) if total_tt else None,
        }

    def callers(key: tuple[str, int, str]) -> list[str]:
        """Where a builtin's own time comes from: its top callers by time spent in it."""
        by = raw[key][4]
        top = sorted(by.items(), key=lambda kv: kv[1][2], reverse=True)[:3]
        return [f"{_fn_label(k)} {v[2] * 1e6 / n:.1f} µs/req" for k, v in top]

    def own_row(
        kv: tuple[tuple[str, int, str], tuple[int, int, float, float, Any]],
    ) -> dict[str, Any]:
        out = row(kv)
        if kv[0][0] == "~":
            out["top_callers"] = callers(kv[0])
        return out

    areas: dict[str, float] = {}
    packages: dict[str, float] = {}
    for key, v in raw.items():
        area = _area(key[0])
        areas[area] = areas.get(area, 0.0) + v[2]
        pkg = area.split("/", 1)[0].split(" ", 1)[0]
        packages[pkg] = packages.get(pkg, 0.0) + v[2]

    def shares(d: dict[str, float]) -> list[dict[str, Any]]:
        return [
            {"area": k, "own_us_per_req": round(v * 1e6 / n, 1), "share": round(v / total_tt, 3)}
            for k, v in sorted(d.items(), key=lambda kv: kv[1], reverse=True)
        ]

    ours = [
        kv
        for kv in by_cum
        if ("aiguard_sidecar/" in kv[0][0] or "aiguard_api/" in kv[0][0])
        and kv[0][2] not in _FRAME_ONLY
    ]
    return {
        "tool": "cProfile, timer time.thread_time (CPU of the event-loop thread only; threads "
        "such as the log writer are not in it; profiler overhead included)",
        "load": f"{a.profile_connections} connections, {a.profile_body} B body, "
        f"{a.profile_seconds:g} s",
        "requests": r.requests,
        "rps_under_profiler": round(r.rps, 1),
        "process_cpu_us_per_req_under_profiler": round(cpu_seconds * 1e6 / n, 1),
        "profiled_us_per_req": round(total_tt * 1e6 / n, 1),
        "note": "calls/req counts a coroutine once per resume; thread_time costs a system "
        "call per profiler event, so functions with many small calls look dearer than they are",
        "top_cumulative": [row(kv) for kv in by_cum[:15]],
        "top_own": [own_row(kv) for kv in by_tt[:20]],
        "aiguard_by_cumulative": [row(kv) for kv in ours[:20]],
        "own_time_by_package": shares(packages)[:12],
        "own_time_by_area": shares(areas)[:25],
    }


# Functions whose cumulative time is mostly the request itself (the framework and the
# upstream round trip), left out of ``aiguard_by_cumulative`` so the stages stand out.
_FRAME_ONLY = frozenset({"handle", "_serve", "_not_a_proxy", "_forward"})


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _portkey_version() -> str:
    try:
        pkg = PORTKEY_BUILD.parent / "package.json"
        return str(json.loads(pkg.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


# ── report ───────────────────────────────────────────────────────────────────────────────────


def ratios(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    idx = {(c["target"], c["body_bytes"], c["connections"]): c for c in cells}
    out = []
    for (t, size, conns), c in sorted(idx.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if t != "sidecar":
            continue
        row: dict[str, Any] = {"body_bytes": size, "connections": conns}
        bare = idx.get(("aiohttp-bare", size, conns))
        if bare is not None and c["proxy_cpu_us_per_req"] and bare["proxy_cpu_us_per_req"]:
            row["cpu_per_req_sidecar_over_bare_aiohttp"] = round(
                c["proxy_cpu_us_per_req"] / bare["proxy_cpu_us_per_req"], 2
            )
        p = idx.get(("portkey", size, conns))
        if p is None:
            out.append(row)
            continue
        if c["proxy_cpu_us_per_req"] and p["proxy_cpu_us_per_req"]:
            row["cpu_per_req_sidecar_over_portkey"] = round(
                c["proxy_cpu_us_per_req"] / p["proxy_cpu_us_per_req"], 2
            )
        if p["rps"]:
            row["rps_sidecar_over_portkey"] = round(c["rps"] / p["rps"], 2)
        if c.get("added_p50_ms") is not None and p.get("added_p50_ms") is not None:
            row["added_p50_ms_sidecar"] = c["added_p50_ms"]
            row["added_p50_ms_portkey"] = p["added_p50_ms"]
            row["added_p99_ms_sidecar"] = c["added_p99_ms"]
            row["added_p99_ms_portkey"] = p["added_p99_ms"]
        out.append(row)
    return out


def budget_check(
    cells: list[dict[str, Any]], proxies: dict[str, ProxyInfo], ttft: dict[str, Any] | None
) -> dict[str, Any]:
    side = [c for c in cells if c["target"] == "sidecar"]
    res: dict[str, Any] = {"budgets": BUDGET}
    at32 = (
        [c for c in side if c["connections"] == max(c2["connections"] for c2 in side)]
        if side
        else []
    )
    if at32:
        best = max(at32, key=lambda c: c["rps"])
        res["rps"] = {
            "measured_max": best["rps"],
            "at": f"{best['body_bytes']} B, c={best['connections']}",
            "proxy_core_util_then": best["proxy_cpu_util"],
            "implied_by_cpu_per_req": [
                {"body_bytes": c["body_bytes"], "rps_per_core": c["implied_rps_per_core"]}
                for c in at32
            ],
            "pass_measured": best["rps"] >= BUDGET["requests_per_second"],
            "pass_implied_all_bodies": all(
                (c["implied_rps_per_core"] or 0) >= BUDGET["requests_per_second"] for c in at32
            ),
        }
    lat = []
    for c in side:
        if c.get("added_p50_ms") is None:
            continue
        lat.append(
            {
                "body_bytes": c["body_bytes"],
                "connections": c["connections"],
                "added_p50_ms": c["added_p50_ms"],
                "added_p99_ms": c["added_p99_ms"],
                "pass_p50": c["added_p50_ms"] <= BUDGET["added_p50_ms"],
                "pass_p99": c["added_p99_ms"] <= BUDGET["added_p99_ms"],
            }
        )
    res["added_latency"] = lat
    if "sidecar" in proxies:
        res["idle_rss"] = {
            "mb": proxies["sidecar"].rss_idle_mb,
            "pass": proxies["sidecar"].rss_idle_mb <= BUDGET["idle_rss_mb"],
        }
    if ttft and "sidecar" in ttft.get("targets", {}):
        ov = ttft["targets"]["sidecar"].get("ttft_overhead_p50_ms")
        if ov is not None:
            res["ttft_overhead"] = {"p50_ms": ov, "pass": ov <= BUDGET["ttft_overhead_ms"]}
    return res


def print_report(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    print()
    print(
        f"machine: {m['cpu']}, {m['cores']} cores; load average start {m['load_average']} → end "
        f"{doc['load_average_end']}; pinning: proxy on {doc['pinning']['proxy_cores']}, load + "
        f"stand-ins on {doc['pinning']['load_cores']}; load generator: {doc['load_generator']}"
    )
    header = [
        "target",
        "body",
        "conn",
        "req/s",
        "p50 ms",
        "p99 ms",
        "+p50 ms",
        "+p99 ms",
        "cpu µs/req",
        "(loop/other)",
        "proxy util",
        "core busy",
        "load1",
    ]
    rows = []
    for c in doc["cells"]:
        rows.append(
            [
                c["target"],
                c["body_bytes"],
                c["connections"],
                c["rps"],
                c["p50_ms"],
                c["p99_ms"],
                c.get("added_p50_ms"),
                c.get("added_p99_ms"),
                c["proxy_cpu_us_per_req"],
                (
                    f"{c['proxy_cpu_us_per_req_main_thread']:.0f}/{c['proxy_cpu_us_per_req_other_threads']:.0f}"
                    if c.get("proxy_cpu_us_per_req_main_thread") is not None
                    else None
                ),
                c["proxy_cpu_util"],
                c["proxy_core_busy"],
                c["loadavg_1m"],
            ]
        )
    print(common.table(rows, header))
    if doc["ratios"]:
        print("\nsidecar vs Portkey (and vs the bare aiohttp pass-through)")
        print(
            common.table(
                [
                    [
                        r["body_bytes"],
                        r["connections"],
                        r.get("cpu_per_req_sidecar_over_bare_aiohttp"),
                        r.get("cpu_per_req_sidecar_over_portkey"),
                        r.get("rps_sidecar_over_portkey"),
                        r.get("added_p50_ms_sidecar"),
                        r.get("added_p50_ms_portkey"),
                        r.get("added_p99_ms_sidecar"),
                        r.get("added_p99_ms_portkey"),
                    ]
                    for r in doc["ratios"]
                ],
                [
                    "body",
                    "conn",
                    "cpu sc/bare",
                    "cpu sc/pk",
                    "rps sc/pk",
                    "+p50 sc",
                    "+p50 pk",
                    "+p99 sc",
                    "+p99 pk",
                ],
            )
        )
    print("\nprocesses")
    print(
        common.table(
            [
                [
                    p["name"],
                    p["startup_seconds"],
                    p["rss_idle_mb"],
                    p["rss_after_mb"],
                    p["rss_peak_mb"],
                ]
                for p in doc["processes"].values()
            ],
            ["process", "startup s", "RSS idle MB", "RSS after MB", "RSS peak MB"],
        )
    )
    if doc.get("ttft"):
        t = doc["ttft"]
        print(
            f"\nstreaming TTFT ({t['requests_per_target']} requests each, chunk delay "
            f"{t['chunk_delay_ms']:g} ms, 1 connection)"
        )
        print(
            common.table(
                [
                    [
                        k,
                        v["ttft_p50_ms"],
                        v["ttft_p90_ms"],
                        v["ttft_p99_ms"],
                        v.get("ttft_overhead_p50_ms"),
                        v.get("ttft_overhead_paired_p50_ms"),
                        v["ttfb_p50_ms"],
                        v["errors"],
                    ]
                    for k, v in t["targets"].items()
                ],
                [
                    "target",
                    "TTFT p50",
                    "TTFT p90",
                    "TTFT p99",
                    "+p50",
                    "+paired p50",
                    "TTFB p50",
                    "errors",
                ],
            )
        )
    g = doc["guardrails"]
    print(f"\nguardrails wired: {g.get('wired')} ({g.get('probe')})")
    if g.get("reason"):
        print(f"  {g['reason']}")
    prof = doc.get("profile")
    if prof and "top_cumulative" in prof:
        print(
            f"\nprofile: {prof['tool']}; {prof['load']}; {prof['requests']} requests; "
            f"{prof['profiled_us_per_req']} µs/req profiled "
            f"({prof['process_cpu_us_per_req_under_profiler']} µs/req process CPU "
            "under the profiler)"
        )
        print(
            common.table(
                [
                    [
                        r["function"][:90],
                        r["calls_per_req"],
                        r["cum_us_per_req"],
                        r["own_us_per_req"],
                    ]
                    for r in prof["top_cumulative"]
                ],
                ["top 15 by cumulative", "calls/req", "cum µs/req", "own µs/req"],
            )
        )
        print()
        print(
            common.table(
                [
                    [
                        r["function"][:90],
                        r["calls_per_req"],
                        r["own_us_per_req"],
                        r["cum_us_per_req"],
                    ]
                    for r in prof["top_own"]
                ],
                ["top 20 by own time", "calls/req", "own µs/req", "cum µs/req"],
            )
        )
        print()
        print(
            common.table(
                [
                    [r["area"], r["own_us_per_req"], r["share"]]
                    for r in prof["own_time_by_area"][:15]
                ],
                ["own time by module", "µs/req", "share"],
            )
        )
        print()
        print(
            common.table(
                [[r["area"], r["own_us_per_req"], r["share"]] for r in prof["own_time_by_package"]],
                ["own time by package", "µs/req", "share"],
            )
        )
        print()
        print(
            common.table(
                [
                    [
                        r["function"][:90],
                        r["calls_per_req"],
                        r["cum_us_per_req"],
                        r["own_us_per_req"],
                    ]
                    for r in prof["aiguard_by_cumulative"]
                ],
                ["aiguard functions by cumulative", "calls/req", "cum µs/req", "own µs/req"],
            )
        )
        for r in prof["top_own"]:
            if r.get("top_callers"):
                print(f"  {r['function']}: called from {'; '.join(r['top_callers'])}")
    b = doc["budget_check"]
    print("\nbudgets (issue 5 item 11):")
    if "rps" in b:
        print(
            f"  req/s ≥ {BUDGET['requests_per_second']:.0f}: measured max "
            f"{b['rps']['measured_max']:,.0f} ({b['rps']['at']}, proxy core util "
            f"{b['rps']['proxy_core_util_then']}); implied by CPU/req: "
            + ", ".join(
                f"{x['body_bytes']} B → {x['rps_per_core']}"
                for x in b["rps"]["implied_by_cpu_per_req"]
            )
        )
    for x in b.get("added_latency", []):
        print(
            f"  added p50 {x['added_p50_ms']} ms ({'ok' if x['pass_p50'] else 'OVER'}), p99 "
            f"{x['added_p99_ms']} ms ({'ok' if x['pass_p99'] else 'OVER'}) at "
            f"{x['body_bytes']} B, c={x['connections']}"
        )
    if "idle_rss" in b:
        print(f"  idle RSS {b['idle_rss']['mb']} MB ({'ok' if b['idle_rss']['pass'] else 'OVER'})")
    if "ttft_overhead" in b:
        print(
            f"  TTFT overhead p50 {b['ttft_overhead']['p50_ms']} ms "
            f"({'ok' if b['ttft_overhead']['pass'] else 'OVER'})"
        )
    for n in doc["notes"]:
        print(f"note: {n}")


# ── compare (``python -m benchmarks.sidecar_proxy compare --ref REF``) ──────────────────────


def compare_main(argv: Sequence[str]) -> int:
    """Interleaved rounds: bare pass-through, sidecar at ``--ref``, sidecar of this tree."""
    import statistics

    ap = argparse.ArgumentParser(prog="sidecar_proxy compare")
    ap.add_argument("--ref", default="HEAD", help="git ref of the 'before' sidecar")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=3.0, help="per run")
    ap.add_argument("--body", type=int, default=2048)
    ap.add_argument(
        "--connections", type=lambda v: tuple(int(x) for x in v.split(",")), default=(32, 1)
    )
    ap.add_argument("--no-guardrails", action="store_true", help="disable default guardrails")
    ap.add_argument(
        "--ttft-requests",
        type=int,
        default=0,
        help="also streamed TTFT, targets taking turns request by request (0: skip)",
    )
    ap.add_argument(
        "--chunk-delay",
        type=float,
        default=0.0,
        help="stand-in delay before each streamed delta (s); 0.005 is what --ttft-only uses: "
        "the first token then meets the sidecar idle (cold caches), as between real tokens",
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / f"{NAME}_compare.json")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="aiguard-bench-compare-"))
    procs = Processes(work)
    cores = common.plan_cores()
    if cores.pinned:
        common.pin_self(cores.load)
    old = work / "ref"
    old.mkdir()
    archive = subprocess.run(
        ["git", "archive", args.ref, "sidecar", "api"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    secrets = work / "secrets"
    (secrets / "openai").mkdir(parents=True)
    (secrets / "openai" / "api-key").write_text(REAL_KEY)
    try:
        port = common.free_port()
        st = procs.start(
            "standin",
            [
                *(sys.executable, "-m", "benchmarks.sidecar_proxy", "standin"),
                *("--port", str(port), "--openai-key", REAL_KEY),
                *("--chunk-delay", str(args.chunk_delay)),
            ],
        )
        wait_tcp(port, st)
        policy = work / "policy.yaml"
        policy.write_text(
            json.dumps(policy_doc(port, None, None, no_guardrails=args.no_guardrails))
        )
        targets: dict[str, tuple[str, int]] = {}
        bport = common.free_port()
        bare = procs.start(
            "bare",
            common.taskset(
                [
                    *(sys.executable, "-m", "benchmarks.sidecar_proxy", "passthrough"),
                    *("--port", str(bport), "--key", REAL_KEY),
                    *("--upstream", f"http://127.0.0.1:{port}{CHAT_PATH}"),
                ],
                cores.subject,
                cores.pinned,
            ),
        )
        wait_tcp(bport, bare)
        targets["aiohttp-bare"] = (f"http://127.0.0.1:{bport}{CHAT_PATH}", bare.pid)
        rss: dict[str, float] = {}
        for name, tree in ((f"sidecar@{args.ref}", old), ("sidecar", None)):
            sport, admin = common.free_port(), common.free_port()
            env = dict(WORKLOAD_ENV)
            if tree is not None:
                env["PYTHONPATH"] = f"{tree / 'sidecar'}:{tree / 'api'}"
            cmd = [sys.executable, "-m", "aiguard_sidecar.main", "--policy", str(policy)]
            cmd += ["--listen", f"127.0.0.1:{sport}", "--admin", f"127.0.0.1:{admin}"]
            cmd += ["--secrets-dir", str(secrets), "--drain-seconds", "1"]
            proc = procs.start(name, common.taskset(cmd, cores.subject, cores.pinned), env=env)
            common.wait_http("127.0.0.1", admin, "/readyz", proc=proc.popen, timeout=90)
            time.sleep(1.0)
            rss[name] = round(common.rss_bytes(proc.pid) / 2**20, 1)
            targets[name] = (f"http://127.0.0.1:{sport}{SIDECAR_PATH}", proc.pid)
        targets["direct"] = (f"http://127.0.0.1:{port}{CHAT_PATH}", 0)
        gen = LoadGen(work)
        side = {"Authorization": f"Bearer {PLACEHOLDER_KEY}", "Content-Type": "application/json"}
        direct = {**side, "Authorization": f"Bearer {REAL_KEY}"}
        scripts = {
            "side": gen.script("compare", chat_body(args.body), side),
            "direct": gen.script("compare-direct", chat_body(args.body), direct),
        }
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        ttft: dict[str, Any] = {}
        if args.ttft_requests > 0:
            ttft = _compare_ttft(targets, side, direct, args.ttft_requests, f"sidecar@{args.ref}")
            ttft["chunk_delay_ms"] = args.chunk_delay * 1000
        for conns in args.connections:
            for name, (url, _) in targets.items():
                gen.run(url, scripts["direct" if name == "direct" else "side"], conns, 1)
            for r in range(args.rounds):
                order = list(targets.items())
                order = order[r % len(order) :] + order[: r % len(order)]
                for name, (url, pid) in order:
                    c0 = common.cpu_seconds(pid) if pid else 0.0
                    lr = gen.run(
                        url, scripts["direct" if name == "direct" else "side"], conns, args.seconds
                    )
                    c1 = common.cpu_seconds(pid) if pid else 0.0
                    n = max(lr.requests, 1)
                    runs.setdefault((name, conns), []).append(
                        {
                            "cpu_us_per_req": (c1 - c0) * 1e6 / n,
                            "rps": lr.rps,
                            "p50_ms": lr.p50_us / 1000,
                            "p99_ms": lr.p99_us / 1000,
                            "errors": lr.errors,
                        }
                    )
        doc: dict[str, Any] = {
            "benchmark": f"{NAME} compare",
            "machine": common.machine(),
            "load_average_end": common.load_average(),
            "ref": args.ref,
            "ref_commit": subprocess.run(
                ["git", "rev-parse", args.ref], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip(),
            "settings": {
                "rounds": args.rounds,
                "seconds": args.seconds,
                "body_bytes": args.body,
                "guardrails": "off" if args.no_guardrails else "policy defaults",
                "method": "targets take turns (order rotated each round) on the same pinned "
                "core; medians over rounds; ratios are per round, then the median",
            },
            "rss_idle_mb": rss,
            "results": {},
        }
        if ttft:
            doc["ttft"] = ttft
        for conns in args.connections:
            rows: dict[str, dict[str, Any]] = {}
            base = runs[("aiohttp-bare", conns)]
            lat = runs[("direct", conns)]
            for name in targets:
                xs = runs[(name, conns)]
                row = {k: round(statistics.median(x[k] for x in xs), 3) for k in xs[0]}
                if name != "direct":
                    row["cpu_ratio_vs_bare"] = round(
                        statistics.median(
                            x["cpu_us_per_req"] / b["cpu_us_per_req"]
                            for x, b in zip(xs, base, strict=True)
                        ),
                        2,
                    )
                    for p in ("p50", "p99"):
                        row[f"added_{p}_ms"] = round(
                            statistics.median(
                                x[f"{p}_ms"] - d[f"{p}_ms"] for x, d in zip(xs, lat, strict=True)
                            ),
                            3,
                        )
                    row["implied_rps_per_core"] = round(1e6 / row["cpu_us_per_req"])
                rows[name] = row
            doc["results"][f"c{conns}"] = rows
        path = common.write_results(NAME, doc, out=args.out)
        print(json.dumps(doc["results"], indent=1))
        if ttft:
            print("ttft", json.dumps(ttft, indent=1))
        print(f"rss idle MB {rss}; wrote {path}")
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _compare_ttft(
    targets: Mapping[str, tuple[str, int]],
    side: dict[str, str],
    direct: dict[str, str],
    n: int,
    ref: str,
) -> dict[str, Any]:
    """Streamed time to first token of each target (200 B body; the stand-in's chunk delay is
    ``--chunk-delay``), the targets taking turns request by request; overhead = p50 and paired
    p50 minus direct; the tree's paired p50 minus the ``ref`` sidecar's."""
    body = chat_body(200, stream=True, unique=False)
    order = [
        (name, url, direct if name == "direct" else side, body)
        for name, (url, _) in targets.items()
    ]
    samples = asyncio.run(_ttft_samples(order, n, warmup=20))
    d = common.summarize(samples["direct"]["ttft"])
    out: dict[str, Any] = {"requests_per_target": n, "body_bytes": 200}
    for name, s in samples.items():
        t = common.summarize(s["ttft"])
        row: dict[str, Any] = {
            "ttft_p50_ms": common.rounded(t["p50"] * 1000),
            "errors": s["errors"],
        }
        if name != "direct":
            row["overhead_p50_ms"] = common.rounded((t["p50"] - d["p50"]) * 1000)
            paired = [x - y for (_, x), (_, y) in _pairs(s["rounds"], samples["direct"]["rounds"])]
            if paired:
                row["overhead_paired_p50_ms"] = common.rounded(statistics.median(paired) * 1000)
        out[name] = row
    if "sidecar" in samples and ref in samples:
        vs = [
            x - y for (_, x), (_, y) in _pairs(samples["sidecar"]["rounds"], samples[ref]["rounds"])
        ]
        if vs:
            out["sidecar"]["minus_ref_paired_p50_ms"] = common.rounded(statistics.median(vs) * 1000)
    return out


# ── idle RSS only (``python -m benchmarks.sidecar_proxy rss``) ──────────────────────────────


def rss_main(argv: Sequence[str]) -> int:
    """Idle RSS only: start the stand-in and the sidecar (default policy, and with every
    guardrail off), read VmRSS 1 s after ``/readyz`` (as the full benchmark does), then again
    after a few requests (the first request's lazy work included). No load, a few seconds."""
    ap = argparse.ArgumentParser(prog="sidecar_proxy rss")
    ap.add_argument("--requests", type=int, default=20, help="requests before rss_after_mb")
    ap.add_argument("--body", type=int, default=2048)
    ap.add_argument("--no-noguard", action="store_true", help="skip the no-guardrails sidecar")
    ap.add_argument("--out", help="write the JSON here (default: print only)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="aiguard-bench-rss-"))
    procs = Processes(work)
    secrets = work / "secrets"
    (secrets / "openai").mkdir(parents=True)
    (secrets / "openai" / "api-key").write_text(REAL_KEY)
    out: dict[str, Any] = {"machine": common.machine(), "sidecars": {}}
    try:
        port = common.free_port()
        st = procs.start(
            "standin",
            [
                *(sys.executable, "-m", "benchmarks.sidecar_proxy", "standin"),
                *("--port", str(port), "--openai-key", REAL_KEY),
            ],
        )
        wait_tcp(port, st)
        body = chat_body(args.body)
        headers = {"Authorization": f"Bearer {PLACEHOLDER_KEY}"}
        variants = [("sidecar", False)] + ([] if args.no_noguard else [("sidecar-noguard", True)])
        for name, off in variants:
            policy = work / f"{name}.policy.yaml"
            policy.write_text(json.dumps(policy_doc(port, None, None, no_guardrails=off)))
            sport, admin = common.free_port(), common.free_port()
            cmd = [*sidecar_command(), "--policy", str(policy)]
            cmd += ["--listen", f"127.0.0.1:{sport}", "--admin", f"127.0.0.1:{admin}"]
            cmd += ["--secrets-dir", str(secrets), "--drain-seconds", "1"]
            cmd += ["--spool-dir", str(work / f"spool-{name}")]
            t0 = time.monotonic()
            proc = procs.start(name, cmd, env=WORKLOAD_ENV)
            common.wait_http("127.0.0.1", admin, "/readyz", proc=proc.popen, timeout=90)
            startup = time.monotonic() - t0
            time.sleep(1.0)
            idle = common.rss_bytes(proc.pid)
            for _ in range(args.requests):
                status, _reply = http_post(f"http://127.0.0.1:{sport}{SIDECAR_PATH}", body, headers)
                if status != 200:
                    raise RuntimeError(f"{name}: HTTP {status}\n{proc.tail()}")
            time.sleep(0.2)
            out["sidecars"][name] = {
                "startup_seconds": round(startup, 2),
                "rss_idle_mb": round(idle / 2**20, 1),
                "rss_after_mb": round(common.rss_bytes(proc.pid) / 2**20, 1),
                "rss_peak_mb": round(common.rss_peak_bytes(proc.pid) / 2**20, 1),
                "requests": args.requests,
            }
            procs.stop(proc)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    out["load_average_end"] = common.load_average()
    out["budget_idle_rss_mb"] = BUDGET["idle_rss_mb"]
    print(json.dumps(out if args.out else {k: out[k] for k in ("sidecars", "load_average_end")}))
    if args.out:
        common.write_results(NAME + "_rss", out, out=Path(args.out))
    return 0


# ── main ─────────────────────────────────────────────────────────────────────────────────────


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per cell (default 5)")
    ap.add_argument(
        "--warmup", type=float, default=1.0, help="warm-up seconds per cell (default 1)"
    )
    ap.add_argument("--bodies", type=lambda s: tuple(int(x) for x in s.split(",")), default=BODIES)
    ap.add_argument(
        "--connections", type=lambda s: tuple(int(x) for x in s.split(",")), default=CONNECTIONS
    )
    ap.add_argument("--ttft-requests", type=int, default=200)
    ap.add_argument("--ttft-body", type=int, default=200)
    ap.add_argument(
        "--chunk-delay", type=float, default=0.005, help="stand-in delay per streamed delta (s)"
    )
    ap.add_argument("--profile-seconds", type=float, default=5.0)
    ap.add_argument("--profile-connections", type=int, default=32)
    ap.add_argument("--profile-body", type=int, default=2048)
    ap.add_argument("--no-portkey", action="store_true")
    ap.add_argument("--no-tls", action="store_true")
    ap.add_argument("--no-quietlog", action="store_true")
    ap.add_argument("--no-noguard", action="store_true", help="skip the no-guardrails sidecar")
    ap.add_argument(
        "--no-bare", action="store_true", help="skip the aiohttp pass-through calibration"
    )
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument(
        "--profile-only", action="store_true", help="only the sidecar profile (no cells, no TTFT)"
    )
    ap.add_argument("--no-ttft", action="store_true")
    ap.add_argument(
        "--profile-stream",
        action="store_true",
        help="profile streamed requests (the TTFT path) instead of JSON ones",
    )
    ap.add_argument(
        "--profile-no-guardrails",
        action="store_true",
        help="profile the sidecar with every default guardrail off (the proxy's own cost)",
    )
    ap.add_argument(
        "--ttft-only", action="store_true", help="only streaming TTFT (no cells, no profile)"
    )
    ap.add_argument("--no-wrk", action="store_true", help="use the aiohttp load generator")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["standin"]:
        return standin_main(argv[1:])
    if argv[:1] == ["profiled-sidecar"]:
        return profiled_sidecar_main(argv[1:])
    if argv[:1] == ["loadgen"]:
        return loadgen_main(argv[1:])
    if argv[:1] == ["passthrough"]:
        return passthrough_main(argv[1:])
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    if argv[:1] == ["rss"]:
        return rss_main(argv[1:])
    args = parse_args(argv)
    if args.profile_only:
        args.no_portkey = args.no_tls = args.no_quietlog = args.no_bare = args.no_ttft = True
        args.no_noguard = True
    if args.ttft_only:
        args.no_tls = args.no_quietlog = args.no_bare = args.no_profile = True
    machine = common.machine()
    bench = Bench(args)
    print(
        f"sidecar_proxy: load average {machine['load_average']} on {machine['cores']} cores; "
        f"work dir {bench.workdir}",
        flush=True,
    )
    failed = False
    try:
        bench.setup()
        print(
            f"targets: {', '.join(bench.targets)}; load generator {bench.loadgen.version}",
            flush=True,
        )
        cells = [] if (args.profile_only or args.ttft_only) else bench.matrix()
        for info in bench.proxies.values():
            with contextlib.suppress(OSError, KeyError):
                info.rss_after_mb = round(common.rss_bytes(info.pid) / 2**20, 1)
                info.rss_peak_mb = round(common.rss_peak_bytes(info.pid) / 2**20, 1)
        ttft = None
        if not (args.no_ttft or args.profile_only):
            print("streaming TTFT …", flush=True)
            ttft = bench.ttft()
        for info in bench.proxies.values():  # peak after streaming too
            with contextlib.suppress(OSError, KeyError):
                info.rss_peak_mb = round(common.rss_peak_bytes(info.pid) / 2**20, 1)
        # Stop the proxies before profiling so the profiled sidecar has its core to itself.
        for p in list(bench.procs.procs):
            if p.name in bench.proxies:
                bench.procs.stop(p)
        prof = None
        if not args.no_profile:
            print("profiling the sidecar …", flush=True)
            prof = bench.profile()
        doc: dict[str, Any] = {
            "benchmark": NAME,
            "machine": machine,
            "load_average_end": common.load_average(),
            "noisy_box_note": "shared machine: compare rows of one body/connection group (run "
            "back to back) rather than absolute numbers; proxy_core_busy above proxy_cpu_util "
            "is someone else on the proxy's core. With other sessions busy there the proxy only "
            "gets its fair share (the kernel groups CPU by session: sched_autogroup), so at 1 "
            "connection most added latency is waiting to be scheduled; CPU per request, and "
            "its ratio to aiohttp-bare measured alongside, are bent least",
            "kernel_sched_autogroup": _read_text("/proc/sys/kernel/sched_autogroup_enabled"),
            "pinning": {
                "proxy_cores": list(bench.cores.subject),
                "load_cores": list(bench.cores.load),
                "pinned": bench.cores.pinned,
            },
            "load_generator": bench.loadgen.version,
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "bodies": list(args.bodies),
                "connections": list(args.connections),
                "model": MODEL,
                "max_tokens": 32,
                "policy": policy_doc(0, 0, 0)["spec"],
                "sidecar_log_level": "info (default): one JSON metadata line per request (no "
                "collector URL; written by its own thread, audit/sink.py RequestLog)",
            },
            "targets": {
                t.name: {
                    "url": t.url,
                    "baseline": t.baseline,
                    "bodies": list(t.bodies),
                    "note": t.note,
                }
                for t in bench.targets.values()
            },
            "processes": {k: vars(v) for k, v in bench.proxies.items()},
            "guardrails": bench.guardrails,
            "cells": cells,
            "ratios": ratios(cells),
            "ttft": ttft,
            "profile": prof,
            "notes": bench.notes,
        }
        doc["budget_check"] = budget_check(cells, bench.proxies, ttft)
        path = common.write_results(NAME, doc, out=args.out)
        print_report(doc)
        print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    except BaseException:
        failed = True
        for p in bench.procs.procs:
            print(f"--- {p.name} (log tail)\n{p.tail()}", file=sys.stderr)
        raise
    finally:
        bench.procs.stop_all()
        if args.keep or failed:
            print(f"work dir kept: {bench.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
