"""The metric declarations of both components, as data, and what can be checked against them.

* :func:`declared` — every metric family the sidecar (``aiguard_sidecar.metrics.Metrics``) and
  the operator (``aiguard_operator.metrics``) declare: name, type, labels, help.
* :func:`series_names` — the sample names Prometheus stores for them (``_total``,
  ``_bucket``/``_sum``/``_count`` ...), plus Prometheus's own ``up``.
* :func:`referenced_metrics` — the metric names a PromQL expression selects.
* :func:`render` / ``python -m tests.observability.catalogue`` — the generated reference
  table of ``docs/metrics.md`` (between the markers), which ``test_metrics_doc`` keeps honest.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from aiguard_operator import metrics as operator_metrics
from aiguard_sidecar.metrics import Metrics

ROOT: Final = Path(__file__).resolve().parents[2]
DOC: Final = ROOT / "docs" / "metrics.md"
RULES: Final = ROOT / "helm" / "aiguard" / "files" / "rules" / "aiguard.rules.yaml"
DASHBOARDS: Final = ROOT / "helm" / "aiguard" / "files" / "dashboards"
BEGIN: Final = "<!-- BEGIN GENERATED: python -m tests.observability.catalogue -->"
END: Final = "<!-- END GENERATED -->"

PROMETHEUS_OWN: Final = frozenset({"up", "scrape_duration_seconds", "ALERTS"})
"""Series Prometheus itself records for every target (or alert) and queries may use."""


@dataclass(frozen=True)
class Family:
    component: str  # sidecar | operator
    name: str  # as exposed: counters with _total
    type: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


def _families(component: str, objects: list[MetricWrapperBase]) -> list[Family]:
    out = []
    for m in objects:
        kind = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}[type(m)]
        name = m._name + ("_total" if kind == "counter" else "")
        labels = tuple(m._labelnames)
        out.append(Family(component, name, kind, labels, m._documentation))
    return out


def declared() -> list[Family]:
    """Every family, in declaration order, sidecar first."""
    sidecar = Metrics(CollectorRegistry())
    side = [v for v in vars(sidecar).values() if isinstance(v, MetricWrapperBase)]
    oper = [v for v in vars(operator_metrics).values() if isinstance(v, MetricWrapperBase)]
    return _families("sidecar", side) + _families("operator", oper)


def series_names(families: list[Family] | None = None) -> set[str]:
    names = set(PROMETHEUS_OWN)
    for f in families if families is not None else declared():
        if f.type == "histogram":
            names |= {f"{f.name}_bucket", f"{f.name}_sum", f"{f.name}_count"}
        else:
            names.add(f.name)
    return names


# ── PromQL, as far as names go ──────────────────────────────────────────────────────────────

_KEYWORDS: Final = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "offset", "bool", "inf", "nan", "atan2"}
)  # fmt: skip
_STRINGS: Final = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS: Final = re.compile(r"\{[^{}]*\}")
_RANGES: Final = re.compile(r"\[[^\[\]]*\]")
_GROUPING: Final = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENT: Final = re.compile(r"(?<![\w:.$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_DURATION: Final = re.compile(r"\b\d+(ms|s|m|h|d|w|y)\b")


def referenced_metrics(expr: str) -> set[str]:
    """Metric names ``expr`` selects (identifiers that are not functions, keywords, label
    names in groupings/matchers, strings or durations)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    text = _DURATION.sub("", text)
    names = set()
    for m in _IDENT.finditer(text):
        if text[m.end() :].lstrip().startswith("("):
            continue  # a function
        if m.group().lower() not in _KEYWORDS:
            names.add(m.group())
    return names


# ── where the queries are ───────────────────────────────────────────────────────────────────

GRAFANA_VARIABLES: Final = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "${namespace}": ".*",
    "$namespace": ".*",
}
"""What Grafana would put in place of the variables the dashboards use (``All`` namespaces)."""


@dataclass(frozen=True)
class Query:
    source: str  # dashboard file or "rules"
    title: str  # panel title or alert name
    expr: str  # as written
    promql: str  # with Grafana's variables filled in

    def __str__(self) -> str:
        return f"{self.source}: {self.title}: {self.expr}"


def grafana_to_promql(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, including those inside collapsed rows."""
    out = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def dashboard_queries() -> list[Query]:
    return [
        Query(name, panel["title"], t["expr"], grafana_to_promql(t["expr"]))
        for name, board in dashboards().items()
        for panel in panels(board)
        for t in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def rule_queries() -> list[Query]:
    return [Query("rules", r["alert"], r["expr"], r["expr"]) for r in alert_rules()]


def promtool_parse_errors(queries: list[Query], tmp: Path) -> str:
    """Parse every query with Prometheus's own parser, offline: each becomes a recording
    rule of a scratch rule file that ``promtool check rules`` checks. Returns promtool's
    complaint ("" when everything parses)."""
    groups = [
        {
            "name": "parse",
            "rules": [
                {"record": f"aiguard:parse:{i}", "expr": q.promql} for i, q in enumerate(queries)
            ],
        }
    ]
    path = tmp / "parse.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return ""
    return f"{done.stdout}{done.stderr}\n" + "\n".join(f"{i}: {q}" for i, q in enumerate(queries))


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise RuntimeError("promtool not found: hack/system-deps.sh installs Debian's prometheus")
    return found


# ── the generated reference ─────────────────────────────────────────────────────────────────


def render(families: list[Family] | None = None) -> str:
    rows = []
    for component in ("sidecar", "operator"):
        where = (
            "the admin port, `:15090/metrics`"
            if component == "sidecar"
            else "`:15091/metrics` (`AIGUARD_METRICS`)"
        )
        rows.append(f"### {component.capitalize()}: {where}\n")
        rows.append("| metric | type | labels | meaning |")
        rows.append("|---|---|---|---|")
        for f in families if families is not None else declared():
            if f.component != component:
                continue
            labels = ", ".join(f"`{label}`" for label in f.labels) or "—"
            meaning = " ".join(f.help.split()).replace("|", "\\|")
            rows.append(f"| `{f.name}` | {f.type} | {labels} | {meaning} |")
        rows.append("")
    return "\n".join(rows)


def splice(doc: str, generated: str) -> str:
    head, sep1, rest = doc.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep1 and sep2):
        raise ValueError(f"{DOC}: the markers {BEGIN!r} ... {END!r} are missing")
    return f"{head}{BEGIN}\n{generated}\n{END}{tail}"


def main() -> int:
    DOC.write_text(splice(DOC.read_text(), render()))
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
