"""Every input under ``tests/fuzz/corpus/<target>/`` (seeds, and the crash inputs the fuzzers
found, kept as ``regression-*``) still passes its target: a fixed crash stays fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted((name, path) for name in TARGETS for path in (CORPUS / name).iterdir())


def test_every_target_has_seeds_and_every_corpus_a_target() -> None:
    assert {p.name for p in CORPUS.iterdir()} == set(TARGETS)
    for name in TARGETS:
        assert any(p.name.startswith("seed-") for p in (CORPUS / name).iterdir()), name


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus_input_passes(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())
