"""The Grafana dashboards: loadable shape, variables, units, queries that parse and read
only metrics llmsvc (or the simulated engine, under vLLM's names) exports.

That every query returns data from a running stack is tests/test_observability_prometheus.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from observability import (
    catalogue,
    dashboards,
    metric_names,
    panel_queries,
    panels,
    series_family,
    substitute,
)
from tools import require_tool

BOARDS = dashboards()
DS_REF = {"type": "prometheus", "uid": "${datasource}"}


def test_the_five_dashboards_with_stable_uids() -> None:
    assert {name: board["uid"] for name, board in BOARDS.items()} == {
        "overview": "llmsvc-overview",
        "backends": "llmsvc-backends",
        "control-plane": "llmsvc-control-plane",
        "batches": "llmsvc-batches",
        "resources": "llmsvc-resources",
    }
    for board in BOARDS.values():
        assert board["title"].startswith("llmsvc / ")
        assert board["schemaVersion"] >= 36  # Grafana 10 and 11 load it without migration
        assert board["id"] is None  # provisioning and the sidecar assign ids
        assert "llmsvc" in board["tags"]


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_datasource_and_template_variables(name: str) -> None:
    found = variables(BOARDS[name])
    ds = found["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    # Batches filters its per-batch panels by tenant (the batch series have no model).
    wanted = {"backends": {"model", "backend"}, "batches": {"tenant"}}.get(name, {"model"})
    assert set(found) == {"datasource"} | wanted
    names = {m.name for m in catalogue()}
    for var in wanted:
        spec = found[var]
        assert spec["type"] == "query" and spec["datasource"] == DS_REF
        assert spec["includeAll"] and spec["multi"] and spec["allValue"] == ".*"
        assert spec["query"]["query"] == spec["definition"]
        metric = spec["definition"].removeprefix("label_values(").split(",")[0]
        assert metric in names, f"{var} reads {metric}, which nothing exports"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_panel_has_a_unit_a_query_and_a_place(name: str) -> None:
    board = BOARDS[name]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    for panel in panels(board):
        title = panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        assert panel.get("description"), f"{title}: no description"
        assert panel["datasource"] == DS_REF, title
        assert panel["targets"], f"{title}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DS_REF, title
            assert target["expr"].strip() and target["legendFormat"], title


def test_every_query_reads_only_exported_metrics() -> None:
    exported = {m.name for m in catalogue()}
    for board, title, expr in panel_queries():
        names = {series_family(n) for n in metric_names(expr)}
        assert names, f"{board}/{title}: no metric found in {expr}"
        assert names <= exported, f"{board}/{title} reads {names - exported}"


def test_metric_name_scan() -> None:
    """The scanner the check above relies on finds series names and nothing else."""
    expr = (
        "histogram_quantile(0.95, sum by (model_name, le) (rate(vllm:time_to_first_token_seconds"
        '_bucket{model_name=~"$model"}[5m]))) / count(max by (x) (up{job="a b"}) == 0)'
        " or vector(0)"
    )
    assert metric_names(expr) == {"vllm:time_to_first_token_seconds_bucket", "up"}


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool checks each query (variables filled in) as a recording rule's expression."""
    promtool = require_tool("promtool")
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": substitute(expr, {"model": ".*", "backend": ".*", "tenant": ".*"}),
        }
        for i, (_, _, expr) in enumerate(panel_queries())
    ]
    path = tmp_path / "queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


FLOW_METRICS = {
    "llmsvc_router_queue_requests",
    "llmsvc_router_held_requests",
    "llmsvc_router_model_demand",
    "llmsvc_router_queue_wait_seconds",
    "llmsvc_router_rejected_requests_total",
    "llmsvc_router_tenant_requests_total",
    "llmsvc_router_tenant_tokens_total",
}


def test_overview_has_a_flow_control_row_with_every_flow_metric() -> None:
    """Queues, held, demand, queue wait, rejections and tenants, under one row."""
    board = BOARDS["overview"]["panels"]
    (row,) = [i for i, p in enumerate(board) if p["type"] == "row" and p["title"] == "Flow control"]
    after = board[row + 1 :]
    until = next((i for i, p in enumerate(after) if p["type"] == "row"), len(after))
    read = {
        series_family(name)
        for panel in after[:until]
        for target in panel["targets"]
        for name in metric_names(target["expr"])
    }
    assert read == FLOW_METRICS
    assert {m.name for m in catalogue()} >= FLOW_METRICS


def test_batches_reads_every_batch_metric() -> None:
    """The Batches dashboard shows every series the batch service exports."""
    read = {
        series_family(name)
        for _, _, expr in (q for q in panel_queries() if q[0] == "batches")
        for name in metric_names(expr)
    }
    batch = {m.name for m in catalogue() if m.component == "batch"}
    assert batch and read == batch


def sla_panel(board: dict[str, Any]) -> dict[str, Any]:
    (panel,) = [p for p in panels(board) if p["title"] == "SLA status"]
    return panel


def test_batches_sla_status_panel_maps_each_status(tmp_path: Path) -> None:
    """The state timeline's query turns each batch's 1-of-3 sla_status series into the
    number its value mappings name: promtool evaluates it over three batches."""
    panel = sla_panel(BOARDS["batches"])
    mapped = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    texts = {int(value): spec["text"] for value, spec in mapped.items()}
    assert texts == {0: "on_track", 1: "at_risk", 2: "violated"}
    series = [
        {
            "series": f'llmsvc_batch_sla_status{{batch_id="{batch}", tenant="t",'
            f' sla_status="{status}", instance="b:8082"}}',
            "values": "1x3" if status == current else "0x3",
        }
        for batch, current in (("b0", "on_track"), ("b1", "at_risk"), ("b2", "violated"))
        for status in texts.values()
    ]
    (target,) = panel["targets"]
    expected = [
        {"labels": f'{{batch_id="b{value}", tenant="t"}}', "value": value} for value in texts
    ]
    tests = {
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": substitute(target["expr"], {"tenant": ".*"}),
                        "eval_time": "1m",
                        "exp_samples": expected,
                    }
                ],
            }
        ]
    }
    path = tmp_path / "sla_panel_test.yaml"
    path.write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [require_tool("promtool"), "test", "rules", path.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
