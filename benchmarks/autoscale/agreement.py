"""Does ``llmsvc simulate`` agree with reality? (``make autoscale-agreement``)

    .venv/bin/python -m benchmarks.autoscale.agreement --doc docs/autoscaling.md  # ~2 minutes
    .venv/bin/python -m benchmarks.autoscale.agreement --tiny --out DIR          # the test's run

One small trace (``trace.py``: bursts separated by idle gaps longer than the
idle timeout) written to a CSV, then run both ways:

- **real**: a registry, ``--babysitters`` babysitters ``--engine sim --idle-timeout T
  --standby sleep`` over simulated engines in real time, and a router
  (``stack.py``); once every babysitter is in standby the CSV's requests are
  sent open loop through the router, streamed, TTFT measured at the client;
  the wake-ups are the babysitters' ``standby.wakes``;
- **simulated**: ``llmsvc simulate`` with policy ``standby`` over the same CSV,
  the same number of engines, idle timeout and engine profile (one file, the
  shipped ``llama.cpp-smollm2-cpu`` timing with ``wake_delay`` set).

The report puts TTFT p50/p95, wake-ups, requests and held requests side by side
with the ratio sim/real, and says whether the targets are met (p95 within 15 %,
the same wake-ups). Results go to ``--out`` (``agreement.json``, ``agreement.md``);
with ``--doc`` the table goes between ``<!-- autoscale-agreement -->`` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.*

from benchmarks.autoscale.report import agreement_markdown, replace_between
from benchmarks.autoscale.sim import RouterModel, SimSide, run_simulation
from benchmarks.autoscale.stack import Stack, StackConfig, attach_router_times, replay
from benchmarks.autoscale.trace import Bursts, generate, read_csv, write_csv
from benchmarks.common.procfs import machine

from llmsvc.bench.stats import distribution
from llmsvc.simengine.profiles import load_profile

ROOT = Path(__file__).resolve().parents[2]
BASE_PROFILE = "llama.cpp-smollm2-cpu"
MARK = "autoscale-agreement"
P95_TOLERANCE = 0.15


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run depends on (written into the results)."""

    babysitters: int = 1
    idle_timeout: float = 3.0
    wake_delay: float = 1.0
    trace: Bursts = field(default_factory=Bursts)
    seed: int = 14
    base_profile: str = BASE_PROFILE
    router: RouterModel = field(default_factory=RouterModel)


TINY = Settings(
    idle_timeout=1.0,
    wake_delay=0.3,
    trace=Bursts(bursts=2, burst_s=1.0, rate=3.0, gap_s=4.0, lead_in_s=2.0, max_inner_gap_s=0.5),
)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def commit() -> str:
    run = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return run.stdout.strip() or "unknown"


def write_profile(settings: Settings, path: Path) -> dict[str, Any]:
    """The shared engine profile: the base profile's timing with ``wake_delay`` set."""
    timing = {**load_profile(settings.base_profile), "wake_delay": settings.wake_delay}
    source = f"{settings.base_profile} with wake_delay {settings.wake_delay:g} s"
    path.write_bytes(orjson.dumps({"source": {"by": source}, "settings": timing}))
    return timing


def side(ttfts: list[float], holds: list[float], *, requests: int, wakes: int) -> dict[str, Any]:
    """One side's figures from its answered requests' TTFTs and its held requests' holds."""
    dist = distribution(ttfts) or {}
    return {
        "requests": requests,
        "answered": len(ttfts),
        "ttft_p50_s": dist.get("p50"),
        "ttft_p95_s": dist.get("p95"),
        "ttft_p99_s": dist.get("p99"),
        "wakes": wakes,
        "held": len(holds),
        "hold_mean_s": round(sum(holds) / len(holds), 4) if holds else None,
    }


async def run_real(
    settings: Settings, work: Path, csv_path: Path, profile: Path, timing: dict[str, Any]
) -> dict[str, Any]:
    # SIGTERM (a test's timeout, a CI job's end) cancels the run, so that the stack's
    # ``async with`` stops every process it started instead of leaving them behind.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    requests = read_csv(csv_path)
    config = StackConfig(
        babysitters=settings.babysitters,
        idle_timeout=settings.idle_timeout,
        profile=profile,
        chars_per_token=float(timing.get("chars_per_token", 4.0)),
        router=settings.router,
    )
    load_start = loadavg()
    async with Stack(config, work / "logs") as stack:
        await stack.wait_standby(timeout=60 + settings.idle_timeout * 3)
        before = await stack.wakes()
        woke_before = await stack.wake_seconds()
        print(f"== real: {len(requests)} requests over {requests[-1].arrival_s:.1f} s", flush=True)
        began = time.monotonic()
        outcomes = await replay(
            stack.router_url, requests, chars_per_token=config.chars_per_token, timeout=120.0
        )
        elapsed = time.monotonic() - began
        wakes = await stack.wakes() - before
        count, total = await stack.wake_seconds()
        count, total = count - woke_before[0], total - woke_before[1]
    # Read once the router has stopped: every access line is written by then.
    attach_router_times(outcomes, stack.router_log.read_text(errors="replace"))
    ok = [o for o in outcomes if o.ok]
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            errors[o.error or "no_content"] = errors.get(o.error or "no_content", 0) + 1
    late = max((o.sent_s - o.arrival_s for o in outcomes), default=0.0)
    # The engine saw the trace's requests: the token counts it reported are the CSV's.
    mismatched = sum(
        1
        for o, r in zip(outcomes, requests, strict=True)
        if o.tokens is not None and o.tokens != (r.prompt_tokens, r.output_tokens)
    )
    result = side(
        [o.ttft_s for o in ok if o.ttft_s is not None],
        [o.hold_s for o in outcomes if o.hold_s],
        requests=len(outcomes),
        wakes=wakes,
    )
    return result | {
        "errors": errors,
        "wake_seconds_mean": round(total / count, 4) if count else None,
        "elapsed_s": round(elapsed, 2),
        "latest_send_s": round(late, 4),
        "token_counts": {
            "logged": sum(1 for o in outcomes if o.tokens is not None),
            "not_as_in_trace": mismatched,
        },
        "load_average_1m": {"start": load_start, "end": loadavg()},
        # [index, arrival, TTFT, hold, error, router queue wait] per request
        "outcomes": [
            [o.index, o.arrival_s, _r(o.ttft_s), _r(o.hold_s), o.error, _r(o.queue_wait_s)]
            for o in outcomes
        ],
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def simulated(settings: Settings, csv_path: Path, profile: Path) -> dict[str, Any]:
    print("== simulated: policy standby", flush=True)
    sim: SimSide = run_simulation(
        csv_path, profile=profile, workers=settings.babysitters,
        idle_timeout=settings.idle_timeout, seed=settings.seed, router=settings.router,
    )  # fmt: skip
    result = side(sim.ttfts, sim.holds, requests=sim.requests, wakes=sim.wakes)
    return result | {
        "rejected": sim.rejected,
        "cold_starts": sim.cold_starts,
        "outcomes": [[i, _r(ttft), _r(held)] for i, (ttft, held) in enumerate(sim.by_request)],
    }


def paired(sim: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
    """Real minus simulated TTFT request by request (the same trace on both sides), apart
    for the requests the real router held (a wake), those it kept in its queue for a free
    slot of the engine (the simulator has no router slots), and the rest: where a gap
    comes from."""
    sim_ttft = {o[0]: o[1] for o in sim["outcomes"]}
    groups: dict[str, list[float]] = {"direct": [], "queued": [], "held": []}
    for index, _, ttft, hold, _, queued in real["outcomes"]:
        other = sim_ttft.get(index)
        if ttft is None or other is None:
            continue
        group = "held" if hold else "queued" if queued else "direct"
        groups[group].append(ttft - other)
    out: dict[str, Any] = {}
    for name, diffs in groups.items():
        dist = distribution(diffs)
        out[name] = None if dist is None else {
            "requests": len(diffs), "median_s": dist["p50"], "p95_s": dist["p95"],
        }  # fmt: skip
    return out


def ratios(sim: dict[str, Any], real: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("ttft_p50_s", "ttft_p95_s", "wakes", "requests", "held", "hold_mean_s"):
        a, b = sim.get(key), real.get(key)
        out[key] = round(a / b, 3) if a is not None and b else None
    return out


def verdict(sim: dict[str, Any], real: dict[str, Any]) -> dict[str, bool]:
    p95 = ratios(sim, real)["ttft_p95_s"]
    return {
        "p95_within_15pct": p95 is not None and abs(p95 - 1) <= P95_TOLERANCE,
        "same_wakes": sim["wakes"] == real["wakes"],
    }


def run(settings: Settings, work: Path, command: str) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    csv_path, profile = work / "trace.csv", work / "profile.json"
    requests = generate(settings.trace, settings.seed)
    write_csv(csv_path, requests)
    timing = write_profile(settings, profile)
    load_start = loadavg()
    real = asyncio.run(run_real(settings, work, csv_path, profile, timing))
    sim = simulated(settings, csv_path, profile)
    return {
        "date": started,
        "commit": commit(),
        "command": command,
        "machine": machine(),
        "load_average_1m": {"start": load_start, "end": loadavg()},
        "settings": dataclasses.asdict(settings)
        | {
            "trace_duration_s": settings.trace.duration_s,
            "timing": timing,
        },
        "real": real,
        "simulated": sim,
        "ratio_sim_over_real": ratios(sim, real),
        "real_minus_sim_ttft": paired(sim, real),
        "targets_met": verdict(sim, real),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """``agreement.png``: every request's TTFT at its arrival, simulated and real (held
    ones ringed), with the bursts' wakes visible as the first requests' holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = result["real"]["outcomes"]
    sim = {o[0]: o for o in result["simulated"]["outcomes"]}
    fig, ax = plt.subplots(figsize=(11, 4.2))
    arrivals = [o[1] for o in real]
    ax.scatter(
        arrivals, [sim[o[0]][1] for o in real], s=14, color="#4c72b0",
        label="simulated (llmsvc simulate)", marker="o",
    )  # fmt: skip
    ax.scatter(
        arrivals, [o[2] for o in real], s=14, color="#dd8452", label="real processes",
        marker="x",
    )  # fmt: skip
    held = [o for o in real if o[3]]
    ax.scatter(
        [o[1] for o in held], [o[2] for o in held], s=90, facecolors="none",
        edgecolors="#c44e52", label="held by the real router (a wake)",
    )  # fmt: skip
    ax.set_xlabel("arrival (s from the replay's start)")
    ax.set_ylabel("TTFT (s)")
    s = result["settings"]
    ax.set_title(
        f"{s['babysitters']} babysitter(s), idle timeout {s['idle_timeout']:g} s, "
        f"wake {s['wake_delay']:g} s: TTFT request by request",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks.autoscale.agreement", description=__doc__.splitlines()[0]
    )
    defaults = Settings()
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "autoscaling")
    parser.add_argument("--work", type=Path, help="logs and the trace (default: a temp dir)")
    parser.add_argument("--doc", type=Path, help="markdown file whose agreement table to replace")
    parser.add_argument("--tiny", action="store_true", help="a few requests (tests)")
    parser.add_argument("--no-plots", action="store_true", help="no agreement.png")
    parser.add_argument("--babysitters", type=int, default=defaults.babysitters)
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout)
    parser.add_argument("--wake-delay", type=float, default=defaults.wake_delay)
    parser.add_argument("--bursts", type=int, default=defaults.trace.bursts)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.babysitters < 1 or args.bursts < 1:
        parser.error("--babysitters and --bursts must be >= 1")
    if args.idle_timeout <= 0 or args.wake_delay < 0:
        parser.error("--idle-timeout must be > 0 and --wake-delay >= 0")
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    if args.tiny:
        return dataclasses.replace(TINY, seed=args.seed)
    # Gaps of the idle timeout plus 5 s: every burst finds the engine asleep.
    trace = dataclasses.replace(
        Bursts(), bursts=args.bursts, gap_s=args.idle_timeout + 5.0,
        lead_in_s=args.idle_timeout + 3.0, max_inner_gap_s=args.idle_timeout / 2,
    )  # fmt: skip
    return Settings(
        babysitters=args.babysitters, idle_timeout=args.idle_timeout,
        wake_delay=args.wake_delay, trace=trace, seed=args.seed,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_of(args)
    command = "python -m benchmarks.autoscale.agreement " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    with tempfile.TemporaryDirectory(prefix="autoscale-agreement-") as tmp:
        try:
            result = run(settings, args.work or Path(tmp), command.strip())
        except asyncio.CancelledError:  # SIGTERM: run_real stopped its processes
            print("benchmarks.autoscale.agreement: terminated", file=sys.stderr)
            return 143
    name = "agreement-tiny" if args.tiny else "agreement"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    if not args.no_plots:
        plot(result, args.out / f"{name}.png")
    table = agreement_markdown(result)
    (args.out / f"{name}.md").write_text(table)
    if args.doc is not None:
        replace_between(args.doc, table, MARK)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
