"""The Batches dashboard over a running batch service: every query returns data.

A simulated engine answering in real time (two sequences at once, 20 tokens/s: a line
of 20 tokens takes about a second) behind the router, the batch service sending its
lines through it, and a real Prometheus scraping the batch service (with its token)
every second. While one batch of tenant ``alice`` runs (long enough for its throughput
and ETA to be measured), every query of ``charts/llmsvc/dashboards/batches.json`` with
``$tenant`` at "All" returns data; the per-batch panels filtered to ``alice`` show her
batch and, to ``bob``, nothing; the ``tenant`` variable's query lists ``alice``; and the
service's ``/metrics`` exposes exactly the documented batch families.

The queries of the other dashboards over the rest of the stack are
tests/test_observability_prometheus.py; the alert over a batch that will miss its
deadline is tests/test_batch_sla_alert.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from batchstack import BATCH_TOKEN, BatchStack, Engine, chat_lines, start_batch_stack
from observability import (
    Prometheus,
    catalogue,
    dashboards,
    exposed_families,
    metric_names,
    panel_queries,
    start_prometheus,
    substitute,
)
from procs import Spawn, wait_until
from tools import require_tool

pytestmark = pytest.mark.slow

ENGINE = Engine(
    "e-real",
    "m",
    ("--time-scale", "1", "--decode-slowdown", "0", "--max-num-seqs", "2",
     "--decode-tokens-per-s", "20"),
)  # fmt: skip
LINES = 40  # about 20 s of work at 2 lines/s: active through the checks
# Series of one batch (labels batch_id, tenant): what the tenant variable filters.
PER_BATCH = {
    "llmsvc_batch_progress_ratio",
    "llmsvc_batch_throughput_lines_per_second",
    "llmsvc_batch_eta_seconds",
    "llmsvc_batch_time_left_seconds",
    "llmsvc_batch_window_used_ratio",
    "llmsvc_batch_deadline_timestamp_seconds",
    "llmsvc_batch_sla_status",
}


def prometheus_config(batch_url: str) -> str:
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "llmsvc-batch",
                "authorization": {"credentials": BATCH_TOKEN},
                "static_configs": [{"targets": [batch_url.removeprefix("http://")]}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def create_batch(stack: BatchStack) -> str:
    """alice's batch: LINES chat lines of 20 tokens, through the router."""
    content, _ = chat_lines(LINES, max_tokens=20)
    client = stack.client("alice")
    uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return created.id


def batch_queries(tenant: str) -> list[tuple[str, str, bool]]:
    """(panel title, query with $tenant filled in, whether it reads per-batch series)."""
    return [
        (title, substitute(expr, {"tenant": tenant}), bool(metric_names(expr) & PER_BATCH))
        for board, title, expr in panel_queries()
        if board == "batches"
    ]


def results(prom: Prometheus, queries: list[tuple[str, str, bool]]) -> list[list[Any]]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda q: prom.result(q[1]), queries))


def test_batches_dashboard_shows_a_running_batch(spawn: Spawn, tmp_path: Path) -> None:
    stack = start_batch_stack(spawn, tmp_path, [ENGINE])
    prom = start_prometheus(
        spawn, tmp_path, require_tool("prometheus"), prometheus_config(stack.batch)
    )
    batch_id = create_batch(stack)
    wait_until(
        lambda: prom.result(f'llmsvc_batch_eta_seconds{{batch_id="{batch_id}"}}'),
        timeout=20,
        what="the batch's ETA measured and scraped",
    )
    wait_until(  # rates need two scrapes: lines ended between them
        lambda: prom.result("sum(rate(llmsvc_batch_lines_total[1m])) > 0"),
        timeout=20,
        what="lines ending, over two scrapes",
    )
    assert stack.batch_object(batch_id)["status"] == "in_progress"
    documented = {m.name for m in catalogue() if m.component == "batch"}
    assert exposed_families(stack.batch_metrics()) == documented  # every family, while active

    every = batch_queries(".*")
    empty = [f"{title}: {q}" for (title, q, _), got in zip(every, results(prom, every), strict=True)
             if not got]  # fmt: skip
    assert not empty, "Batches queries without data:\n" + "\n".join(empty)

    alice = [q for q in batch_queries("alice") if q[2]]
    bob = [q for q in batch_queries("bob") if q[2]]
    assert alice and len(alice) == len(bob)
    for (title, _, _), got in zip(alice, results(prom, alice), strict=True):
        assert got, f"{title}: nothing for alice"
        ids = {sample["metric"].get("batch_id") for sample in got}
        assert ids <= {batch_id, None}, f"{title}: {ids}"
    for (title, query, _), got in zip(bob, results(prom, bob), strict=True):
        # "at risk" counts with `or vector(0)`: a 0, not nothing.
        values = {sample["value"][1] for sample in got}
        assert not got or values == {"0"}, f"{title} shows bob something: {query} -> {got}"

    (variable,) = [
        v for v in dashboards()["batches"]["templating"]["list"] if v["name"] == "tenant"
    ]
    metric = variable["definition"].removeprefix("label_values(").split(",")[0]
    values = httpx.get(
        f"{prom.url}/api/v1/label/tenant/values", params={"match[]": metric}, timeout=5
    ).json()["data"]
    assert "alice" in values, values
