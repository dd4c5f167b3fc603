"""A batch that cannot meet its deadline is ``at_risk`` before it, and the alert says so.

Two simulated engines behind the router, each serving its own model in real time:
``slow`` (2 sequences at once, 10 tokens/s: a 20-token line takes 2 s, so 1 line/s) and
``fast`` (0.2 s a line, 2 at once). The infeasible batch has 60 lines for ``slow`` and a
40 s window (it needs about 60 s); the feasible one has 400 lines for ``fast`` and a 1 h
window (it needs about 40 s). ``--initial-concurrency`` is as high as both batches'
lines together, so that the nearer deadline does not starve the other batch of slots.

While both run, the infeasible batch turns ``at_risk`` through its ETA (before 70 % of
its window is used, the other reason) and before its deadline; the feasible one is
``on_track`` at every look. A real Prometheus scrapes the batch service's ``/metrics``
(with its token) and evaluates ``BatchSLAAtRisk`` from a copy of the chart's
``llmsvc-batch`` rule group whose ``for:`` durations are shortened to 0 s (the real rule
waits 2 minutes): the alert is pending or firing for the infeasible batch's ``batch_id``
and never for the feasible one's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from batchstack import BATCH_TOKEN, BatchStack, Engine, chat_lines, start_batch_stack
from observability import Prometheus, start_prometheus
from procs import Spawn
from tools import ROOT, require_tool

pytestmark = pytest.mark.slow

RULES = ROOT / "charts" / "llmsvc" / "files" / "alerts.rules.yaml"
REALTIME = ("--time-scale", "1", "--decode-slowdown", "0", "--max-num-seqs", "2")
SLOW = Engine("e-slow", "slow", (*REALTIME, "--decode-tokens-per-s", "10"))
FAST = Engine("e-fast", "fast", (*REALTIME, "--decode-tokens-per-s", "100"))
WINDOW_S = 40


def batch_rules(tmp: Path) -> Path:
    """The chart's ``llmsvc-batch`` group alone, evaluated every second, ``for:`` 0 s."""
    doc = yaml.safe_load(RULES.read_text())
    groups = [g for g in doc["groups"] if g["name"] == "llmsvc-batch"]
    assert groups, f"no llmsvc-batch rule group in {RULES}"
    group = groups[0]
    group["interval"] = "1s"
    names = [rule.get("alert") for rule in group["rules"]]
    assert "BatchSLAAtRisk" in names, names
    for rule in group["rules"]:
        if "for" in rule:
            rule["for"] = "0s"
    path = tmp / "batch.fast.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    return path


def prometheus_config(batch_url: str, rules: Path) -> str:
    target = batch_url.removeprefix("http://")
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "batch",
                "authorization": {"credentials": BATCH_TOKEN},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def create(stack: BatchStack, model: str, lines: int, window: str, prefix: str) -> str:
    content, _ = chat_lines(lines, model=model, max_tokens=20, prefix=prefix)
    client = stack.client("alice")
    uploaded = client.files.create(file=(f"{prefix}.jsonl", content), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]  # the client types only "24h"
    )
    return created.id


def at_risk_alerts(prom: Prometheus) -> dict[str, str]:
    """batch_id -> state (pending/firing) of every BatchSLAAtRisk alert."""
    alerts = httpx.get(f"{prom.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {
        a["labels"].get("batch_id", ""): a["state"]
        for a in alerts
        if a["labels"].get("alertname") == "BatchSLAAtRisk"
    }


def test_infeasible_batch_at_risk_and_alerted_feasible_on_track(
    spawn: Spawn, tmp_path: Path
) -> None:
    prometheus = require_tool("prometheus")
    stack = start_batch_stack(
        spawn,
        tmp_path,
        [SLOW, FAST],
        batch_flags=("--max-concurrency", "500", "--initial-concurrency", "460"),
    )
    prom = start_prometheus(
        spawn, tmp_path, prometheus, prometheus_config(stack.batch, batch_rules(tmp_path))
    )
    feasible = create(stack, "fast", 400, "1h", "ok")
    infeasible = create(stack, "slow", 60, f"{WINDOW_S}s", "late")

    seen_feasible: list[str] = []
    risky: dict[str, Any] | None = None
    alerts: dict[str, str] = {}
    view: list[dict[str, Any]] = []
    end = time.monotonic() + WINDOW_S + 10
    while time.monotonic() < end:
        ok, late = stack.batch_object(feasible), stack.batch_object(infeasible)
        if ok["status"] == "in_progress":
            seen_feasible.append(ok["llmsvc"]["sla_status"])
        if risky is None and late["llmsvc"]["sla_status"] == "at_risk":
            risky = late
            view = stack.get("/sla/status", tenant="alice").json()["data"]
        if risky is not None:
            alerts = at_risk_alerts(prom)
            if infeasible in alerts:
                break
        time.sleep(0.25)

    assert risky is not None, f"never at_risk: {stack.batch_object(infeasible)}"
    ext = risky["llmsvc"]
    assert risky["status"] == "in_progress", risky
    assert ext["time_left_seconds"] > 0, "at_risk only past the deadline"
    assert ext["window_used"] < 0.7, f"at_risk only for the window used, not the ETA: {ext}"
    assert ext["eta"] is not None and ext["eta"] > ext["deadline"], ext
    assert ext["eta_seconds"] > ext["time_left_seconds"], ext

    # The seed's view then: both active, nearest deadline first, each with its status; bob
    # sees neither.
    assert [b["id"] for b in view][:2] == [infeasible, feasible], view
    assert [b["sla_status"] for b in view][:2] == ["at_risk", "on_track"], view
    assert stack.get("/sla/status", tenant="bob").json()["data"] == []

    assert infeasible in alerts, f"BatchSLAAtRisk not pending or firing for it: {alerts}"
    assert alerts[infeasible] in ("pending", "firing")
    assert feasible not in alerts, alerts
    series = prom.result(f'llmsvc_batch_eta_seconds{{batch_id="{feasible}"}}')
    left = prom.result(f'llmsvc_batch_time_left_seconds{{batch_id="{feasible}"}}')
    assert left, "no time_left series for the feasible batch"

    # The feasible one ran alongside, and was on_track at every look.
    assert seen_feasible, "the feasible batch never ran while the other was watched"
    assert set(seen_feasible) == {"on_track"}, seen_feasible
    ok = stack.batch_object(feasible)
    assert ok["request_counts"]["completed"] > 0, ok
    if series:
        assert float(series[0]["value"][1]) < float(left[0]["value"][1])
    print(f"at_risk: {ext}; alerts {alerts}; feasible on_track at {len(seen_feasible)} looks")
