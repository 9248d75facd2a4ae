"""The Grafana dashboards (helm/aiguard/files/dashboards/*.json): importable JSON with a
Prometheus data source variable, every panel with queries, every query parsed by Prometheus's
own parser and selecting only metrics the sidecar or the operator declare.

That each query returns series from a real Prometheus is test_prometheus.py's business."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.observability import catalogue

BOARDS = catalogue.dashboards()
EXPECTED = {"aiguard-overview.json", "aiguard-guardrails.json", "aiguard-compliance.json"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_the_three_dashboards_exist_with_distinct_uids() -> None:
    assert set(BOARDS) == EXPECTED
    uids = [b["uid"] for b in BOARDS.values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_is_importable_grafana_json(name: str) -> None:
    board = BOARDS[name]
    assert board["uid"] == Path(name).stem
    assert len(board["uid"]) <= 40  # Grafana's limit
    assert board["title"].startswith("aiguard / ")
    assert isinstance(board["schemaVersion"], int)
    assert board["schemaVersion"] >= 36
    assert "id" not in board or board["id"] is None  # provisioning assigns ids
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["datasource"] == DATASOURCE


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_panel_queries_the_selected_prometheus(name: str) -> None:
    panels = catalogue.panels(BOARDS[name])
    assert panels
    ids = [p["id"] for p in BOARDS[name]["panels"]]
    assert len(set(ids)) == len(ids), "panel ids repeat"
    for panel in panels:
        where = f"{name}: {panel['title']}"
        assert panel["datasource"] == DATASOURCE, where
        assert panel["targets"], f"{where}: no queries"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), f"{where}: refIds repeat"
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"] == DATASOURCE, where
        grid: dict[str, Any] = panel["gridPos"]
        assert grid["x"] >= 0, where
        assert grid["x"] + grid["w"] <= 24, where
        assert panel.get("description"), f"{where}: say what the panel shows"


def test_every_query_parses(tmp_path: Path) -> None:
    queries = catalogue.dashboard_queries()
    assert catalogue.promtool_parse_errors(queries, tmp_path) == ""


def test_a_query_prometheus_cannot_parse_is_caught(tmp_path: Path) -> None:
    broken = catalogue.Query("x.json", "broken", "sum(rate(x[5m])", "sum(rate(x[5m])")
    assert "broken" in catalogue.promtool_parse_errors([broken], tmp_path)


@pytest.mark.parametrize("query", catalogue.dashboard_queries(), ids=str)
def test_every_query_uses_only_declared_metrics(query: catalogue.Query) -> None:
    used = catalogue.referenced_metrics(query.promql)
    assert used, f"no metric found in {query}"
    assert used <= catalogue.series_names(), f"undeclared: {used - catalogue.series_names()}"


def test_every_declared_metric_is_on_a_dashboard_or_in_an_alert() -> None:
    used = set().union(
        *(catalogue.referenced_metrics(q.promql) for q in catalogue.dashboard_queries()),
        *(catalogue.referenced_metrics(q.promql) for q in catalogue.rule_queries()),
    )
    unseen = [
        f.name
        for f in catalogue.declared()
        if not used & catalogue.series_names([f]) and f.name not in UNCHARTED
    ]
    assert not unseen, f"declared but neither charted nor alerted on: {unseen}"


UNCHARTED = {
    "aiguard_secret_reloads_total": "operational detail, in the sidecar's log as well",
}
