"""Generated files do not drift from the models: `make crds` would change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aiguard_api import generate

ROOT = Path(__file__).resolve().parents[2]


def test_crds_and_policy_reference_are_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    code = generate.main(
        ["--check", "--crds", str(ROOT / "crds"), "--docs", str(ROOT / "docs/policy-reference.md")]
    )

    assert code == 0, capsys.readouterr().err


def test_every_file_in_crds_is_a_crd_or_says_it_is_not_generated() -> None:
    generated = set(generate.crd_files())
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert {d["kind"] for d in docs} == {"CustomResourceDefinition"}, path.name
        if path.name not in generated:
            assert path.read_text().startswith("# Not generated"), path.name
