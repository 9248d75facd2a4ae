"""Coverage-guided fuzzing (atheris/libFuzzer) of ``targets.request_parsers``.

    python -m tests.fuzz.fuzz_request_parsers [CORPUS_DIR ...] [-max_total_time=SECONDS] [...]

``tests/fuzz/test_fuzzers.py`` runs it for a bounded time in CI; a crash input it finds is
kept under ``tests/fuzz/corpus/request_parsers/`` and replayed by ``tests/fuzz/test_corpus.py``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["aiguard_sidecar", "aiguard_operator", "aiguard_api"]):
    from tests.fuzz.targets import request_parsers


def main() -> None:
    atheris.Setup(sys.argv, request_parsers)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
