"""The coverage-guided fuzzers run for a bounded time and find no crash.

Each ``tests/fuzz/fuzz_<target>.py`` runs in its own process (atheris + libFuzzer) for
``AIGUARD_FUZZ_SECONDS`` seconds (default 10), starting from the committed corpus
``tests/fuzz/corpus/<target>/`` and ``tests/fuzz/json.dict``; new inputs go to a temporary
directory, so the work tree is never written. A crash fails the test with the input's path and
the traceback: fix the bug, then copy the input to ``tests/fuzz/corpus/<target>/regression-*``
so ``test_corpus.py`` replays it for good.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
SECONDS = max(1, int(os.environ.get("AIGUARD_FUZZ_SECONDS", "10")))

pytestmark = pytest.mark.slow


@pytest.mark.timeout(SECONDS + 240)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzzer_finds_no_crash(target: str, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    cmd = [
        sys.executable,
        "-m",
        f"tests.fuzz.fuzz_{target}",
        str(work),
        str(HERE / "corpus" / target),
        f"-dict={HERE / 'json.dict'}",
        f"-max_total_time={SECONDS}",
        "-max_len=8192",
        "-timeout=30",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 200, check=False
    )
    log = "\n".join(
        line for line in proc.stderr.splitlines() if not line.startswith("INFO: Instrumenting")
    )
    crashes = sorted(p for p in tmp_path.iterdir() if p.is_file())
    report = f"fuzz_{target} exited {proc.returncode}; crash inputs {crashes}\n{log[-6000:]}"
    assert crashes == [], report
    assert proc.returncode == 0, report
    runs = [line for line in log.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert runs, log[-2000:]
    assert int(runs[0].split(":")[-1]) > 0, "the fuzzer ran no input"
