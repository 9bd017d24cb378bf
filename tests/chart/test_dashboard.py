"""The Grafana dashboard queries only series the operator exports, and covers all of them."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from lensllm_operator.metrics import OperatorMetrics

# The sample names Prometheus stores for each kind of metric family prometheus-client exports.
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
METRIC_NAME = re.compile(r"\blensllm_[a-zA-Z0-9_:]*")


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    """Every series name the operator can export -> the family it belongs to."""
    registry = CollectorRegistry()
    OperatorMetrics(registry=registry)
    return {
        family.name + suffix: family.name for family in registry.collect() for suffix in SAMPLE_SUFFIXES[family.type]
    }


@pytest.fixture(scope="module")
def dashboard(chart_dir: Path) -> dict[str, Any]:
    return json.loads((chart_dir / "dashboards" / "lensllm.json").read_text())


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_every_query_uses_only_exported_series(dashboard: dict, exported: dict) -> None:
    used = {name for expr in queries(dashboard) for name in METRIC_NAME.findall(expr)}
    assert used, "no lensllm_ series found in the dashboard"
    assert used <= exported.keys(), f"not exported by the operator: {sorted(used - exported.keys())}"


def test_every_exported_family_has_a_panel(dashboard: dict, exported: dict) -> None:
    panel_exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    shown = {exported[name] for expr in panel_exprs for name in METRIC_NAME.findall(expr) if name in exported}
    assert shown == set(exported.values())


def test_every_query_reads_operator_series(dashboard: dict) -> None:
    for expr in queries(dashboard):
        assert METRIC_NAME.search(expr), expr


def test_trial_duration_quantiles_come_from_the_histogram_buckets(dashboard: dict) -> None:
    exprs = [t["expr"] for p in dashboard["panels"] if p["title"] == "Trial duration quantiles" for t in p["targets"]]
    assert len(exprs) == 3
    assert all(
        "histogram_quantile(" in e and "lensllm_trial_duration_seconds_bucket" in e and "by (le)" in e for e in exprs
    )


def test_selection_panels_follow_the_namespace_and_selection_variables(dashboard: dict) -> None:
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "selection"} <= variables
    row = next(p for p in dashboard["panels"] if p["type"] == "row" and "$selection" in p["title"])
    per_selection = [
        t["expr"] for p in dashboard["panels"] if p["gridPos"]["y"] > row["gridPos"]["y"] for t in p.get("targets", [])
    ]
    assert per_selection
    for expr in per_selection:
        for series in METRIC_NAME.finditer(expr):
            selector = re.match(r"\{([^}]*)\}", expr[series.end() :])
            assert selector and {'namespace="$namespace"', 'selection="$selection"'} <= set(
                re.split(r",\s*", selector[1])
            ), expr


def test_every_panel_reads_the_chosen_datasource(dashboard: dict) -> None:
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
