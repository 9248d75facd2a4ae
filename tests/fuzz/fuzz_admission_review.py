"""Coverage-guided fuzzing (atheris/libFuzzer) of ``targets.admission_review``.

    python -m tests.fuzz.fuzz_admission_review [CORPUS_DIR ...] [-max_total_time=SECONDS] [...]

``tests/fuzz/test_fuzzers.py`` runs it for a bounded time in CI; a crash input it finds is
kept under ``tests/fuzz/corpus/admission_review/`` and replayed by ``tests/fuzz/test_corpus.py``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["aiguard_sidecar", "aiguard_operator", "aiguard_api"]):
    from tests.fuzz.targets import admission_review


def main() -> None:
    atheris.Setup(sys.argv, admission_review)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
