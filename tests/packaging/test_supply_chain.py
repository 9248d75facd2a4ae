"""The decisions of hack/supply_chain.py (``make supply-chain``), without the network: which
licences fail, how the allow-list and accepted findings apply, and that a package pip-audit could
not look up is never reported as clean."""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("supply_chain", ROOT / "hack/supply_chain.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["supply_chain"] = module
    spec.loader.exec_module(module)
    return module


sc = _load()
DENY = ["GPL", "AGPL", "SSPL", "EUPL"]


@pytest.mark.parametrize(
    ("licence", "denied"),
    [
        ("GPL-3.0-only", ["GPL"]),
        ("GPLv2+", ["GPL"]),
        ("License :: OSI Approved :: GNU General Public License v3 (GPLv3)", ["GPL"]),
        ("AGPL-3.0-or-later", ["AGPL"]),
        ("GNU Affero General Public License v3", ["AGPL"]),
        ("LGPL-2.1-or-later", []),
        ("GNU Lesser General Public License v2 or later (LGPLv2+)", []),
        ("MIT", []),
        ("Apache-2.0 OR BSD-3-Clause", []),
        ("BSD License; MIT License", []),
        ("MPL-2.0", []),
        ("Server Side Public License", ["SSPL"]),
    ],
)
def test_denied_licences_are_recognised_and_lgpl_is_not_gpl(
    licence: str, denied: list[str]
) -> None:
    assert sc.denied_terms(licence, DENY) == denied


def policy(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "supply-chain.toml"
    path.write_text('[licences]\ndeny = ["GPL", "AGPL"]\n' + text)
    return sc.Policy.load(path)


def test_the_committed_policy_loads() -> None:
    loaded = sc.Policy.load()
    assert "GPL" in loaded.deny
    assert "AGPL" in loaded.deny


def test_gpl_and_unknown_licences_fail_unless_allowed_with_a_reason(tmp_path: Path) -> None:
    rows = [
        {"Name": "good", "Version": "1", "License-Metadata": "MIT"},
        {"Name": "copyleft", "Version": "2", "License-Expression": "GPL-3.0-only"},
        {"Name": "mystery", "Version": "3", "License-Metadata": "UNKNOWN"},
        {"Name": "Reviewed_Pkg", "Version": "4", "License-Classifier": "GPLv2"},
    ]
    allow = '[[licences.allow]]\npackage = "reviewed-pkg"\nreason = "dual-licensed, MIT taken"\n'
    findings, notes = sc.check_licences(rows, policy(tmp_path, allow))
    assert [(f.package, f.problem) for f in findings] == [
        ("copyleft", "denied licence GPL"),
        ("mystery", "licence unknown"),
    ]
    assert notes == ["Reviewed_Pkg 4: denied licence GPL, allowed: dual-licensed, MIT taken"]


def test_an_allow_entry_without_a_reason_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no reason"):
        policy(tmp_path, '[[licences.allow]]\npackage = "x"\nreason = " "\n')


def test_an_accepted_finding_needs_a_reason_and_expires(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs"):
        policy(tmp_path, '[[vulnerabilities.ignore]]\nid = "GHSA-1"\npackage = "x"\n')
    loaded = policy(
        tmp_path,
        '[[vulnerabilities.ignore]]\nid = "GHSA-1"\npackage = "x"\nreason = "unreachable"\n'
        "expires = 2027-01-31\n",
    )
    assert loaded.active_ignores(dt.date(2027, 1, 31)) == {"GHSA-1"}
    assert loaded.active_ignores(dt.date(2027, 2, 1)) == set(), "an expired acceptance fails"


def test_audit_findings_ignores_and_unauditable_packages() -> None:
    report = {
        "dependencies": [
            {"name": "clean", "version": "1.0", "vulns": []},
            {
                "name": "vulnerable",
                "version": "2.0",
                "vulns": [
                    {"id": "PYSEC-1", "aliases": ["CVE-1"], "fix_versions": ["2.1"]},
                    {"id": "GHSA-accepted", "aliases": [], "fix_versions": []},
                ],
            },
            # pip-audit could not look these up: the project-level JSON decides if it can
            {"name": "latest", "skip_reason": "Dependency not found on PyPI: latest (3.0)"},
            {"name": "older", "skip_reason": "Dependency not found on PyPI: older (1.0)"},
            {"name": "offline", "skip_reason": "Dependency not found on PyPI: offline (1.0)"},
        ]
    }
    projects: dict[str, Any] = {
        "latest": {
            "info": {"version": "3.0"},
            "vulnerabilities": [
                {"id": "GHSA-latest", "aliases": ["CVE-9"], "fixed_in": ["3.1"]},
                {"id": "GHSA-withdrawn", "withdrawn": "2026-01-01"},
            ],
        },
        "older": {"info": {"version": "1.5"}, "vulnerabilities": []},
    }
    result = sc.evaluate_audit(report, {"GHSA-accepted"}, projects.get)
    assert sorted(result.audited) == ["clean", "latest", "vulnerable"]
    assert [(v.package, v.id) for v in result.findings] == [
        ("vulnerable", "PYSEC-1"),
        ("latest", "GHSA-latest"),
    ]
    assert [v.id for v in result.ignored] == ["GHSA-accepted"]
    assert result.unaudited == [
        "older==1.0 (latest is 1.5)",
        "offline==1.0 (no vulnerability data)",
    ]


def test_an_ignore_matches_an_alias_too() -> None:
    report = {
        "dependencies": [
            {"name": "x", "version": "1", "vulns": [{"id": "PYSEC-7", "aliases": ["CVE-7"]}]}
        ]
    }
    result = sc.evaluate_audit(report, {"CVE-7"}, lambda _: None)
    assert result.findings == []
    assert [v.id for v in result.ignored] == ["PYSEC-7"]
