"""The alerting rules (helm/aiguard/files/rules/aiguard.rules.yaml): Prometheus accepts them,
each is specified firing and not firing in testdata/aiguard.rules.test.yaml and behaves so
under `promtool test rules`, and each tells the person it pages what to do."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability import catalogue

TESTDATA = Path(__file__).parent / "testdata"
SEVERITIES = {"critical", "warning"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [catalogue.promtool(), *args], capture_output=True, text=True, check=False, cwd=TESTDATA
    )


def specified_cases() -> dict[str, dict[str, int]]:
    """alert name → {"fires": n, "quiet": n} over every rule test file."""
    cases: dict[str, dict[str, int]] = {}
    for path in sorted(TESTDATA.glob("*.test.yaml")):
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                seen = cases.setdefault(case["alertname"], {"fires": 0, "quiet": 0})
                seen["fires" if case.get("exp_alerts") else "quiet"] += 1
    return cases


def test_promtool_accepts_the_rule_file() -> None:
    done = promtool("check", "rules", str(catalogue.RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(catalogue.alert_rules())} rules found" in done.stdout


def test_every_alert_fires_and_stays_quiet_exactly_as_specified() -> None:
    files = sorted(p.name for p in TESTDATA.glob("*.test.yaml"))
    assert files, "no rule unit tests"
    done = promtool("test", "rules", *files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = specified_cases()
    for rule in catalogue.alert_rules():
        seen = cases.get(rule["alert"], {"fires": 0, "quiet": 0})
        assert seen["fires"] >= 1, f"{rule['alert']}: no case where it fires"
        assert seen["quiet"] >= 1, f"{rule['alert']}: no case where it must not fire"
    unknown = set(cases) - {r["alert"] for r in catalogue.alert_rules()}
    assert not unknown, f"test cases for alerts that do not exist: {unknown}"


@pytest.mark.parametrize("rule", catalogue.alert_rules(), ids=lambda r: r["alert"])
def test_each_alert_says_how_bad_what_happened_and_where_the_runbook_is(
    rule: dict[str, Any],
) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    doc, _, anchor = annotations["runbook_url"].partition("#")
    assert doc == "docs/metrics.md"
    assert anchor == rule["alert"].lower()
    headings = re.findall(r"^### (\S+)$", catalogue.DOC.read_text(), re.MULTILINE)
    assert rule["alert"] in headings, f"docs/metrics.md has no runbook section {rule['alert']}"


def test_dropped_audit_events_page_at_once() -> None:
    (rule,) = [r for r in catalogue.alert_rules() if r["alert"] == "AIGuardAuditEventsDropped"]
    assert rule["labels"]["severity"] == "critical"
    assert "for" not in rule


@pytest.mark.parametrize("query", catalogue.rule_queries(), ids=lambda q: q.title)
def test_alert_expressions_use_only_declared_metrics(query: catalogue.Query) -> None:
    used = catalogue.referenced_metrics(query.promql)
    assert used, f"no metric found in {query}"
    assert used <= catalogue.series_names(), f"undeclared: {used - catalogue.series_names()}"
