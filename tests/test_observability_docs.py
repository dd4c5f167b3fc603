"""docs/observability.md's metrics table is the services' own metrics, rendered.

Every metric the router, registry, babysitter, operator, batch service and simulated
engine create (on fresh registries, as the services do) is in the table with its type,
labels and help, and nothing else is. ``LLMSVC_UPDATE_DOCS=1`` rewrites the table instead.
"""

from __future__ import annotations

import os

from observability import DOC, TABLE_BEGIN, TABLE_END, catalogue, documented_table, render_table


def test_metrics_table_is_generated_from_the_code() -> None:
    text = DOC.read_text()
    table = render_table(catalogue())
    if os.environ.get("LLMSVC_UPDATE_DOCS") == "1":
        start, end = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
        DOC.write_text(f"{text[:start]}\n{table}\n{text[end:]}")
        text = DOC.read_text()
    assert documented_table(text) == table, (
        "docs/observability.md's metrics table is stale: "
        "LLMSVC_UPDATE_DOCS=1 pytest tests/test_observability_docs.py rewrites it"
    )


def test_catalogue_covers_every_component() -> None:
    infos = catalogue()
    prefixes = {
        "router": "llmsvc_router_",
        "registry": "llmsvc_registry_",
        "babysitter": "llmsvc_babysitter_",
        "operator": "llmsvc_operator_",
        "batch": "llmsvc_batch_",
        "sim-engine (vLLM names)": "vllm:",
    }
    for component, prefix in prefixes.items():
        names = [m.name for m in infos if m.component == component]
        assert names and all(n.startswith(prefix) for n in names), component
    for m in infos:  # the contract's naming: base units, counters end in _total
        assert m.help, m.name
        assert (m.type == "counter") == m.name.endswith("_total"), m.name
        assert "model" not in m.labels and "backend_name" not in m.labels, m.name
