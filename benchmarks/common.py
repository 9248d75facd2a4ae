"""Helpers shared by the benchmarks (not a benchmark itself: ``run.py`` skips ``common``).

* ports and readiness: :func:`free_port`, :func:`wait_http`;
* a process's cost from ``/proc``: :func:`cpu_seconds` (utime+stime of every thread),
  :func:`rss_bytes` / :func:`rss_peak_bytes`, and :class:`CoreUsage` (how busy each core was,
  to tell whether a neighbour shared the core under test);
* :func:`summarize` / :func:`percentile` (linear interpolation, as numpy's default);
* CPU pinning: :func:`plan_cores` splits the cores this process may use into the core under
  test and the load-generator cores, :func:`taskset` prefixes a command with them;
* :func:`machine` (CPU model, cores, load average, memory) and :func:`write_results`, which
  writes ``benchmarks/results/<name>.json`` atomically with the machine included;
* :func:`table` for the printed tables.

Linux only (``/proc``); every benchmark here runs on Linux.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ── ports ────────────────────────────────────────────────────────────────────────────────────


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on ``host`` (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http(
    url_host: str,
    port: int,
    path: str = "/",
    *,
    timeout: float = 30.0,
    proc: subprocess.Popen[Any] | None = None,
    ok: Sequence[int] = (200,),
) -> None:
    """Poll ``GET path`` until it answers one of ``ok``; raise if ``proc`` exits or time runs
    out."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {path} answered")
        try:
            conn = http.client.HTTPConnection(url_host, port, timeout=2)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status in ok:
                return
            last = f"HTTP {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise TimeoutError(f"{url_host}:{port}{path} not ready after {timeout}s ({last})")


# ── /proc ────────────────────────────────────────────────────────────────────────────────────


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the whole process (all its threads), in seconds."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU per thread (``tid → seconds``); the main thread's tid is ``pid``."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = cpu_seconds_of(task / "stat")
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return out


def cpu_seconds_of(stat_file: Path) -> float:
    """utime + stime (fields 14 and 15 of proc(5)) of a ``/proc/.../stat`` file, in seconds."""
    raw = stat_file.read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_bytes(pid: int) -> int:
    return _status_kb(pid, "VmRSS") * 1024


def rss_peak_bytes(pid: int) -> int:
    return _status_kb(pid, "VmHWM") * 1024


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass(frozen=True)
class CoreUsage:
    """Busy and total jiffies per core, from ``/proc/stat``; subtract two snapshots."""

    busy: dict[int, int]
    total: dict[int, int]

    @classmethod
    def snapshot(cls) -> CoreUsage:
        busy: dict[int, int] = {}
        total: dict[int, int] = {}
        for line in Path("/proc/stat").read_text().splitlines():
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            n = [int(v) for v in vals]
            idle = n[3] + (n[4] if len(n) > 4 else 0)  # idle + iowait
            core = int(name[3:])
            total[core] = sum(n[:8])  # guest time is already inside user/nice
            busy[core] = total[core] - idle
        return cls(busy, total)

    def busy_fraction_since(self, earlier: CoreUsage, cores: Iterable[int]) -> float:
        """Fraction (0..1) of the given cores' time spent busy between the two snapshots."""
        b = sum(self.busy.get(c, 0) - earlier.busy.get(c, 0) for c in cores)
        t = sum(self.total.get(c, 0) - earlier.total.get(c, 0) for c in cores)
        return b / t if t > 0 else 0.0


# ── statistics ───────────────────────────────────────────────────────────────────────────────


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of already sorted values, linear interpolation."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    k = (len(sorted_values) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo))


def summarize(values: Iterable[float], points: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"n", "mean", "p50", "p90", "p99", "max"}`` of ``values`` (same unit as the input)."""
    v = sorted(values)
    out: dict[str, float] = {"n": len(v)}
    if not v:
        return out
    out["mean"] = sum(v) / len(v)
    for p in points:
        out[f"p{p:g}"] = percentile(v, p)
    out["max"] = v[-1]
    return out


# ── pinning ──────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Cores:
    subject: tuple[int, ...]
    """The core(s) the process under test gets (budgets are per core: one)."""
    load: tuple[int, ...]
    """Where the load generator and the upstream stand-ins run."""
    pinned: bool
    note: str = ""

    def csv(self, which: str) -> str:
        return ",".join(str(c) for c in getattr(self, which))


def plan_cores() -> Cores:
    """One core for the process under test, the others for everything else. With a single
    core nothing can be separated: no pinning, and the results say so."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2 or shutil.which("taskset") is None:
        why = "one core available" if len(allowed) < 2 else "taskset not installed"
        return Cores(tuple(allowed), tuple(allowed), False, f"not pinned: {why}")
    return Cores((allowed[0],), tuple(allowed[1:]), True)


def taskset(cmd: Sequence[str], cores: Sequence[int], enabled: bool = True) -> list[str]:
    if not enabled:
        return list(cmd)
    return ["taskset", "-c", ",".join(str(c) for c in cores), *cmd]


def pin_self(cores: Sequence[int]) -> None:
    """Pin this process (and the children it starts afterwards) to ``cores``."""
    os.sched_setaffinity(0, set(cores))


# ── machine and results ──────────────────────────────────────────────────────────────────────


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_allowed": len(os.sched_getaffinity(0)),
        "memory_mb": mem_mb,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": load_average(),
    }


def write_results(name: str, doc: Mapping[str, Any], *, out: Path | None = None) -> Path:
    """Write ``doc`` as ``benchmarks/results/<name>.json`` (or ``out``) atomically."""
    path = out if out is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def rounded(value: float | None, digits: int = 3) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(value, digits)


# ── printing ─────────────────────────────────────────────────────────────────────────────────


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain fixed-width table; numbers right-aligned, ``None`` as ``-``."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    text = [[cell(v) for v in r] for r in rows]
    widths = [len(h) for h in header]
    for r in text:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
        for i in range(len(header))
    ]
    lines = [
        "  ".join(
            h.ljust(w) if not n else h.rjust(w)
            for h, w, n in zip(header, widths, numeric, strict=True)
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in text:
        lines.append(
            "  ".join(
                c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, numeric, strict=True)
            )
        )
    return "\n".join(lines)
