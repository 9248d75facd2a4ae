"""Coverage-guided fuzzing (atheris/libFuzzer) of ``targets.collector_ingest``.

    python -m tests.fuzz.fuzz_collector_ingest [CORPUS_DIR ...] [-max_total_time=SECONDS] [...]

``tests/fuzz/test_fuzzers.py`` runs it for a bounded time in CI; a crash input it finds is
kept under ``tests/fuzz/corpus/collector_ingest/`` and replayed by ``tests/fuzz/test_corpus.py``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["aiguard_sidecar", "aiguard_operator", "aiguard_api"]):
    from tests.fuzz.targets import collector_ingest


def main() -> None:
    atheris.Setup(sys.argv, collector_ingest)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
