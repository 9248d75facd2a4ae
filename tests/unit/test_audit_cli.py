"""``kubectl aiguard verify-audit FILE...``: exit codes and reports on exported JSON lines."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from aiguard_api import audit
from aiguard_operator import cli
from tests.harness.auditdata import chain


def write(path: Path, items: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items))
    return path


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(["verify-audit", *args], out=out), out.getvalue()


def test_an_intact_export_verifies(tmp_path: Path) -> None:
    events = chain(4) + chain(3, pod="other")
    code, text = run(str(write(tmp_path / "a.jsonl", events)))
    assert code == 0
    assert text == "verified 7 events in 2 chain(s): OK\n"


def test_problems_name_the_event_and_the_line(tmp_path: Path) -> None:
    events = chain(5)
    events[1]["aiguard.outcome"] = "access_denied"  # edited
    del events[3]  # deleted
    path = write(tmp_path / "a.jsonl", ["", *events, "{torn"])
    code, text = run(str(path))
    assert code == 1
    lines = text.splitlines()
    assert lines[0].startswith(f"edited: {events[1]['instance']} #2 id {events[1]['id']}")
    assert lines[0].endswith(f"[{path}:3]")
    assert lines[1].startswith(f"gap: {events[3]['instance']} #5")
    assert lines[1].endswith(f"[{path}:5]")
    assert lines[2].startswith("invalid:")
    assert lines[2].endswith(f"[{path}:6]")
    assert lines[-1] == "verified 5 events in 1 chain(s): 3 problem(s)"


def test_purge_records_in_the_export_mark_chain_starts(tmp_path: Path) -> None:
    events = chain(6)
    record = audit.PurgeRecord(
        id="purge-1",
        time=audit.format_time(0),
        namespace="team-a",
        policy="test-policy",
        rule="spec.audit.retentionDays=30",
        retention_days=30,
        cutoff=audit.format_time(0),
        count=2,
        oldest=None,
        newest=None,
        chains=[
            audit.PurgedChain(
                instance=events[0]["instance"],
                first_sequence=1,
                last_sequence=2,
                last_hash=events[1]["hash"],
                count=2,
            )
        ],
    ).model_dump(mode="json", by_alias=True)
    without = write(tmp_path / "a.jsonl", events[2:])
    assert run(str(without))[0] == 1
    code, text = run(str(write(tmp_path / "b.jsonl", [record, *events[2:]])), "-o", "json")
    assert code == 0
    assert json.loads(text) == {"ok": True, "events": 4, "chains": 1, "problems": []}


def test_files_and_collector_are_exclusive(tmp_path: Path, capsys: Any) -> None:
    path = write(tmp_path / "a.jsonl", chain(1))
    with pytest.raises(SystemExit) as usage:
        run(str(path), "--collector", "http://127.0.0.1:1")
    assert usage.value.code == 2
    code, _ = run("--collector", "http://127.0.0.1:1")  # nothing listens there
    assert code == 1
    assert "cannot read the collector" in capsys.readouterr().err
