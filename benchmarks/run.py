"""Run every benchmark (``make bench``) and collect the results.

Each benchmark is a module ``benchmarks/<name>.py`` runnable as ``python -m benchmarks.<name>``;
it writes ``benchmarks/results/<name>.json`` and prints its own table. They run one after the
other, each in a fresh process, so one's memory or warm caches never flatter another's.
Record the machine with the figures: ``benchmarks/results/machine.json`` is written here.

    make bench                     # all of them
    make bench ONLY=admission      # python -m benchmarks.run --only admission
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SKIP = {"__init__", "run", "common"}


def discover() -> list[str]:
    return sorted(
        p.stem for p in HERE.glob("*.py") if p.stem not in SKIP and not p.stem.startswith("_")
    )


def machine() -> dict[str, object]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run aiguard's benchmarks")
    ap.add_argument("--only", action="append", default=[], help="benchmark name (repeatable)")
    args = ap.parse_args(argv)
    names = args.only or discover()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "machine.json").write_text(json.dumps(machine(), indent=2) + "\n")
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"])
        outcome = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"--- {name}: {outcome} in {time.monotonic() - t0:.0f}s")
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
