"""The bundle on disk: every file written and listed in manifest.json with its SHA-256;
``kubectl aiguard evidence --verify`` finds an edited, missing or added file; the HTML is
self-contained; the CSVs and the JSON carry the report's numbers; nothing of a decision's
reason text (or any content) is copied in."""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from aiguard_operator import cli
from aiguard_operator.evidence import build, bundle, command
from tests.unit.test_evidence_build import PROVENANCE, REASON_MARKER, sources

FILES = {
    "index.html", "report.md", "evidence.json", "dataflow.svg", "manifest.json", "controls.csv",
    "events_by_outcome.csv", "decisions.csv", "access_may.csv", "access_did.csv",
    "access_change.csv", "dataflows.csv", "guardrail_log.csv", "chains.csv", "incidents.csv",
    "purges.csv", "policies.csv", "tls.csv", "pii.csv",
}  # fmt: skip


@pytest.fixture
def written(tmp_path: Path) -> tuple[build.Report, Path]:
    report = build.build(sources(), PROVENANCE)
    out = tmp_path / "bundle"
    bundle.write(report, out)
    return report, out


def evidence_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(["evidence", *args], out=out), out.getvalue()


def test_every_file_is_written_and_listed_with_its_digest(
    written: tuple[build.Report, Path],
) -> None:
    _, out = written
    assert {p.name for p in out.iterdir()} == FILES
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == FILES - {"manifest.json"}
    assert manifest["provenance"]["cluster_server"] == "https://127.0.0.1:6443"
    assert manifest["provenance"]["period_from"] == PROVENANCE.period_from
    assert manifest["digest"].startswith("sha256:")
    assert bundle.verify(out) == []
    assert evidence_cli("--verify", str(out)) == (
        0,
        f"bundle {out}: every file matches manifest.json\n",
    )


def test_verify_finds_an_edited_a_missing_and_an_added_file(
    written: tuple[build.Report, Path],
) -> None:
    _, out = written
    doc = json.loads((out / "evidence.json").read_text())
    doc["totals"]["denied"] = 0
    (out / "evidence.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "pii.csv").unlink()
    (out / "notes.txt").write_text("added later\n")
    problems = bundle.verify(out)
    assert [p.split(":")[0] for p in problems] == ["evidence.json", "pii.csv", "notes.txt"]
    assert "changed" in problems[0]
    assert problems[1] == "pii.csv: missing"
    code, text = evidence_cli("--verify", str(out))
    assert code == 1
    assert text.endswith("3 problem(s)\n")


def test_verify_finds_an_edited_manifest(written: tuple[build.Report, Path]) -> None:
    _, out = written
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "report.md").write_text("# a different report\n")
    manifest["files"]["report.md"]["sha256"] = "0" * 64  # covering the edit up, badly
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems = bundle.verify(out)
    assert problems[0] == "manifest.json: the digest does not match its file list (edited)"


def test_writing_into_a_directory_that_is_not_empty_is_refused(
    written: tuple[build.Report, Path],
) -> None:
    report, out = written
    with pytest.raises(FileExistsError):
        bundle.write(report, out)


def test_nothing_of_a_reason_text_or_content_reaches_the_bundle(
    written: tuple[build.Report, Path],
) -> None:
    _, out = written
    for f in out.iterdir():
        text = f.read_text()
        assert REASON_MARKER not in text, f.name
        assert "hello" not in text, f.name  # the scenario's prompt text (hashed in the events)


def test_html_is_self_contained(written: tuple[build.Report, Path]) -> None:
    _, out = written
    html = (out / "index.html").read_text()
    assert "<svg" in html
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\((?!#)|src=", html, re.I)
    # The only URLs are the SVG namespace and the sources named in the provenance text.
    urls = set(re.findall(r"https?://[^\s\"'<)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "https://127.0.0.1:6443",
                    "http://127.0.0.1:15093", "http://127.0.0.1:15093."}  # fmt: skip
    for cid in ("CC6.1", "CC6.6", "CC6.7", "CC7.2", "CC7.3", "CC8.1", "A1.1", "A1.2", "PI1.1",
                "PI1.4", "C1.1", "C1.2", "P4.1", "P6.1"):  # fmt: skip
        assert f"<td>{cid}</td>" in html


def test_svg_is_well_formed_and_draws_every_flow(written: tuple[build.Report, Path]) -> None:
    report, out = written
    root = ET.fromstring((out / "dataflow.svg").read_text())  # noqa: S314 - our own output
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "team-a/chatbot" in texts
    assert "openai-backup" in texts
    assert "2 req, 3 redacted" in texts
    edges = list(root.iter("{http://www.w3.org/2000/svg}path"))
    # one arrow-head path + one edge workload→sidecar + one per sidecar→target
    assert len(edges) == 1 + 1 + len({(f.provider, f.model) for f in report.flows})


def test_json_and_csv_carry_the_reports_numbers(written: tuple[build.Report, Path]) -> None:
    report, out = written
    doc = json.loads((out / "evidence.json").read_text())
    assert doc["schema"] == "aiguard.dev/evidence/v1"
    assert doc["totals"] == report.totals
    assert [c["id"] for c in doc["controls"]] == [c.id for c in report.controls]
    rows = list(csv.DictReader(io.StringIO((out / "guardrail_log.csv").read_text())))
    assert [(r["guardrail"], r["type"], r["count"]) for r in rows] == [
        ("pii", "EMAIL_ADDRESS", "2"),
        ("pii", "PHONE_NUMBER", "1"),
        ("prompt_injection", "jailbreak", "1"),
    ]
    outcomes = list(csv.DictReader(io.StringIO((out / "events_by_outcome.csv").read_text())))
    assert sum(int(r["count"]) for r in outcomes) == 6
    controls = list(csv.DictReader(io.StringIO((out / "controls.csv").read_text())))
    assert {r["id"]: r["status"] for r in controls}["CC7.3"] == "attention"
    md = (out / "report.md").read_text()
    assert "| CC6.7 | Malicious input: prompt-injection detection | PASS |" in md


@pytest.mark.parametrize(
    ("value", "end", "expected"),
    [
        ("2025-06-01", False, "2025-06-01T00:00:00.000000Z"),
        ("2025-06-30", True, "2025-07-01T00:00:00.000000Z"),
        ("2025-06-01T12:30:00+02:00", True, "2025-06-01T10:30:00.000000Z"),
    ],
)
def test_dates_on_the_command_line(value: str, end: bool, expected: str) -> None:
    assert command.parse_when(value, end=end) == expected


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert evidence_cli("--from", "2025-06-01")[0] == 2
    assert evidence_cli("--from", "yesterday", "--out", str(tmp_path / "x"),
                        "--collector", "http://127.0.0.1:1")[0] == 2  # fmt: skip
    backwards = ["--from", "2025-06-02", "--to", "2025-06-01", "--out", str(tmp_path / "x")]
    assert evidence_cli(*backwards, "--collector", "http://127.0.0.1:1")[0] == 2
