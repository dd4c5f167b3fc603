"""``--plots DIR``: replicas vs demand over time, and TTFT over time, one panel per policy.

matplotlib is in the ``bench`` extra; :func:`missing` says so before a long run starts.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from llmsvc.simulate.api import SimResult

MAX_POINTS = 20000
"""TTFT points drawn per policy at most (every n-th request beyond that)."""


def missing() -> str | None:
    """Why plots cannot be drawn here (None: they can)."""
    if importlib.util.find_spec("matplotlib") is None:
        return "--plots needs matplotlib: pip install 'llmsvc[bench]'"
    return None


def write_plots(directory: Path, results: Sequence[SimResult]) -> list[Path]:
    """Write ``replicas.png`` and ``ttft.png`` under ``directory``; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    rows = len(results)
    written: list[Path] = []

    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.4 * rows), sharex=True, squeeze=False)
    for ax, result in zip(axes[:, 0], results, strict=True):
        times = [s.t for s in result.timeline]
        ax.step(times, [s.replicas for s in result.timeline], where="post", label="engines on")
        ax.step(times, [s.ready for s in result.timeline], where="post", label="ready")
        ax.set_ylabel("engines")
        ax.set_ylim(bottom=0)
        demand_ax = ax.twinx()
        demand_ax.plot(times, [s.demand for s in result.timeline], color="grey", lw=0.8)
        demand_ax.set_ylabel("demand", color="grey")
        demand_ax.set_ylim(bottom=0)
        ax.set_title(f"{result.policy}: {result.gpu_seconds:.0f} GPU-s", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("simulated time (s)")
    fig.tight_layout()
    path = directory / "replicas.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.4 * rows), sharex=True, squeeze=False)
    for ax, result in zip(axes[:, 0], results, strict=True):
        answered = [r for r in result.requests if r.first_token >= 0]
        stride = max(1, len(answered) // MAX_POINTS)
        shown = answered[::stride]
        ax.scatter([r.arrival for r in shown], [r.first_token - r.arrival for r in shown], s=2)
        ax.set_yscale("log")
        ax.set_ylabel("TTFT (s)")
        p95 = result.ttft.p95
        title = f"{result.policy}: p95 {p95:.3f} s" if p95 is not None else result.policy
        ax.set_title(title, fontsize=9)
    axes[-1, 0].set_xlabel("arrival (simulated s)")
    fig.tight_layout()
    path = directory / "ttft.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
