"""deploy/grafana: the dashboard is valid JSON for Grafana 10/11 (schemaVersion 39), picks its
Prometheus through a variable, lays its panels out without overlap, and queries only metrics
the daemon exports, in PromQL that Prometheus parses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.daemon_metrics import HISTOGRAMS, METRICS, SCRAPE_SERIES, series_names, unknown_names

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "spek-sentinel.json"
DATASOURCE = "${datasource}"
# Grafana's macros and the dashboard's variables, as Grafana would expand them
_EXPANSIONS = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "30s"}
_VARIABLE = re.compile(r"\$(job|instance|signal)\b")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def expand(expr: str) -> str:
    for macro, value in _EXPANSIONS.items():
        expr = expr.replace(macro, value)
    return _VARIABLE.sub(".*", expr)


def test_the_dashboard_is_grafana_json_with_a_prometheus_variable() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["uid"] == "spek-sentinel"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "signal"):
        assert variables[name]["datasource"]["uid"] == DATASOURCE
        assert unknown_names(variables[name]["definition"]) == set()


def test_every_panel_uses_the_datasource_variable() -> None:
    for panel in panels(dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[x, y]}"
                taken[x, y] = panel["title"]


@pytest.mark.parametrize(("title", "expr"), queries(dashboard()))
def test_panels_query_only_exported_metrics(title: str, expr: str) -> None:
    assert unknown_names(expr) == set(), f"{title}: {expr}"
    assert series_names(expr) or any(name in expr for name in SCRAPE_SERIES), title


def test_every_exported_metric_has_a_panel() -> None:
    used = {
        name.removesuffix(suffix)
        for _, expr in queries(dashboard())
        for name in series_names(expr)
        for suffix in ("_bucket", "_sum", "_count")
        if name.removesuffix(suffix) in METRICS
    }
    assert set(METRICS) - used == set()
    assert set(HISTOGRAMS) <= used


def test_every_query_is_promql_that_prometheus_parses(tmp_path: Path) -> None:
    """Each query, with Grafana's macros expanded, as a recording rule for promtool."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "`promtool` not found; install the Debian package `prometheus` "
            "(apt-get install prometheus)",
            pytrace=False,
        )
    rules = [
        {"record": f"dashboard:query_{index}", "expr": expand(expr)}
        for index, (_, expr) in enumerate(queries(dashboard()))
    ]
    path = tmp_path / "dashboard-queries.yml"
    # JSON is YAML: promtool reads it as a rule file
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
