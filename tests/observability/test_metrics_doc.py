"""docs/metrics.md lists exactly the metrics the code declares, with their labels and help
(regenerate with `make metrics-doc`)."""

from __future__ import annotations

from tests.observability import catalogue


def test_the_reference_matches_the_declarations() -> None:
    doc = catalogue.DOC.read_text()
    assert catalogue.splice(doc, catalogue.render()) == doc, (
        "docs/metrics.md is stale: run `make metrics-doc`"
    )


def test_every_declared_metric_is_in_the_reference_once() -> None:
    doc = catalogue.DOC.read_text()
    for family in catalogue.declared():
        assert doc.count(f"| `{family.name}` |") == 1, family.name


def test_metric_names_follow_the_conventions() -> None:
    for f in catalogue.declared():
        assert f.name.startswith(("aiguard_", "gen_ai_")), f.name
        if f.type == "counter":
            assert f.name.endswith("_total"), f.name
        assert not {"user", "user_id", "request_id", "path", "url_path"} & set(f.labels), f.name
