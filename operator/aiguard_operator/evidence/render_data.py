"""Report → evidence.json and the CSV files (pure: returns text).

``evidence.json`` holds everything (schema ``aiguard.dev/evidence/v1``); each CSV is one
table of it, with a header row, for spreadsheets and GRC tools.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from aiguard_operator.evidence.build import Report

SCHEMA: Final = "aiguard.dev/evidence/v1"


def to_json(report: Report) -> str:
    doc = {"schema": SCHEMA, **dataclasses.asdict(report)}
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([_cell(v) for v in row])
    return buf.getvalue()


def _dataclass_table(items: Sequence[Any], cls: type) -> str:
    names = [f.name for f in dataclasses.fields(cls)]
    return _table(names, ([getattr(i, n) for n in names] for i in items))


def _counts(items: Sequence[Any], labels: Sequence[str]) -> str:
    return _table([*labels, "count"], ([*(c.labels[k] for k in labels), c.count] for c in items))


def csv_files(report: Report) -> dict[str, str]:
    """File name → CSV text."""
    from aiguard_operator.evidence import build

    tables: dict[str, Callable[[], str]] = {
        "controls.csv": lambda: _table(
            ["id", "title", "status", "rule", "evidence"],
            ([c.id, c.title, c.status, c.rule, " | ".join(c.evidence)] for c in report.controls),
        ),
        "events_by_outcome.csv": lambda: _counts(report.outcomes, ("outcome", "status")),
        "decisions.csv": lambda: _counts(
            report.decisions, ("stage", "rule", "decision", "enforcement")
        ),
        "access_may.csv": lambda: _dataclass_table(report.grants, build.Grant),
        "access_did.csv": lambda: _dataclass_table(report.usage, build.Usage),
        "access_change.csv": lambda: _dataclass_table(report.editors, build.Editor),
        "dataflows.csv": lambda: _dataclass_table(report.flows, build.Flow),
        "guardrail_log.csv": lambda: _dataclass_table(report.guardrail_log, build.Violation),
        "chains.csv": lambda: _dataclass_table(report.chains, build.ChainRow),
        "incidents.csv": lambda: _dataclass_table(report.incidents, build.IncidentRow),
        "purges.csv": lambda: _dataclass_table(report.purges, build.PurgeRow),
        "policies.csv": lambda: _dataclass_table(report.policies, build.PolicyRow),
        "tls.csv": lambda: _counts(report.tls, ("version", "cipher")),
        "pii.csv": lambda: _counts(report.pii, ("type", "direction", "action")),
    }
    return {name: make() for name, make in tables.items()}
