"""``python -m benchmarks.calibration``: the simulated engine against the real one, same load.

With ``--fit``, first refits the profile: starts the real ``llama-server`` (the
cached build of ``make real-engine``, ``-c 2048 -np 2 -t 1 --metrics``: one
thread, since two threads on a shared 2-core machine wait on each other), runs
``llmsvc sim-engine fit`` against it and writes the shipped profile file, so
that the fit and the comparison run back to back on the same machine state.

Then, ``--runs`` times: the real server and ``llmsvc sim-engine --profile P
--seed RUN``, one at a time, each given the same closed-loop load
(``--concurrency`` streams, the same seeded prompts, unique so that nothing is
cached). Writes the TTFT and inter-token-latency percentiles of both, their
CDFs (one plot per run), and how busy the machine was in every phase
(:mod:`.machine`) to ``--out`` (docs/simulated-engine/: calibration.json, .md,
calibration.png, calibration-run2.png, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from benchmarks.calibration.machine import Phase
from benchmarks.common.ports import free_port
from benchmarks.common.processes import last_line, start, stop
from scripts.real_engine import llama_server_path, model_path

from llmsvc.simengine import fit
from llmsvc.simengine.probe import Prober, Timing, make_prompt
from llmsvc.simengine.profiles import PROFILE_DIR

MODEL = "SmolLM2-135M-Instruct.Q4_1"
REAL_FLAGS = ("-c", "2048", "-np", "2", "-t", "1", "--metrics")
FIT_FLAGS = ("--prompt-tokens", "32,128,256,512", "--samples", "3", "--decode-tokens", "64")
"""The fit of the shipped profile: prompts spanning the comparison's (and more), 3 repeats,
and 64 tokens per decode probe (189 gaps alone: enough for a 95th percentile)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibration", description=__doc__)
    parser.add_argument("--out", default="docs/simulated-engine")
    parser.add_argument("--profile", default="llama.cpp-smollm2-cpu")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--runs", type=int, default=1, help="comparisons, one after another")
    parser.add_argument("--fit", action="store_true", help="refit the profile first")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--prompt-tokens", default="32,256", help="min,max (tokens of 4 chars)")
    parser.add_argument("--max-tokens", type=int, default=16)
    return parser.parse_args(argv)


def prompts(args: argparse.Namespace) -> list[str]:
    rng = random.Random(12)
    low, high = (int(v) for v in args.prompt_tokens.split(","))
    sizes = [rng.randint(low, high) * 4 for _ in range(args.requests)]
    return [make_prompt(rng, size, nonce=f"c{i}") for i, size in enumerate(sizes)]


async def closed_loop(
    url: str, model: str, work: list[str], args: argparse.Namespace
) -> list[Timing]:
    queue = list(reversed(work))
    done: list[Timing] = []
    timeout = aiohttp.ClientTimeout(total=300)
    connector = aiohttp.TCPConnector(force_close=True)  # llama.cpp closes streams after [DONE]
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        prober = Prober(session, url=url, model=model)
        await prober.stream(make_prompt(random.Random(1), 64, nonce="warm"), 2)

        async def client() -> None:
            while queue:
                done.append(await prober.stream(queue.pop(), args.max_tokens))

        await asyncio.gather(*(client() for _ in range(args.concurrency)))
    return done


async def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit(f"{url} not ready in {timeout} s")


def run_one(command: list[str], port: int, model: str, work: list[str], args: argparse.Namespace,
            log: Path) -> tuple[list[Timing], dict[str, Any]]:  # fmt: skip
    """The closed loop against one engine, and how busy the machine was meanwhile."""
    proc = start(command, log)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(wait_ready(url))
        phase = Phase(proc.pid)
        phase.start()
        timings = asyncio.run(closed_loop(url, model, work, args))
        return timings, phase.stop()
    except BaseException:
        print(f"{command[0]}: {last_line(log)}", file=sys.stderr)
        raise
    finally:
        stop(proc)


def real_command(port: int) -> list[str]:
    return [str(llama_server_path()), "-m", str(model_path()), *REAL_FLAGS,
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def refit(profile: str, log: Path) -> dict[str, Any]:
    """``llmsvc sim-engine fit`` of a fresh real server into the shipped profile's file."""
    path = PROFILE_DIR / f"{profile}.json"
    port = free_port()
    proc = start(real_command(port), log)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(wait_ready(url))
        phase = Phase(proc.pid)
        phase.start()
        argv = ["--url", url, "--model", MODEL, "--out", str(path), *FIT_FLAGS]
        fit.main(argv)
        conditions = phase.stop()
    except BaseException:
        print(f"llama-server: {last_line(log)}", file=sys.stderr)
        raise
    finally:
        stop(proc)
    document = orjson.loads(path.read_bytes())
    document["source"] = {
        **document["source"],
        "url": "llama-server of make real-engine (llama.cpp b11434), "
        f"SmolLM2-135M-Instruct.Q4_1.gguf, {' '.join(REAL_FLAGS)}, on this machine "
        f"({os.cpu_count()} CPUs), started by python -m benchmarks.calibration --fit",
        "command": f"llmsvc sim-engine fit --url http://127.0.0.1:PORT --model {MODEL} "
        + " ".join(FIT_FLAGS),
        "machine": conditions,
    }
    fit_doc = document.pop("fit")
    document["fit"] = fit_doc  # source, settings, fit: the order of the shipped file
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"refitted {path}: {document['settings']}")
    return {"profile_file": str(path), "settings": document["settings"], "machine": conditions}


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return {"p50": round(statistics.median(values), 4), "p95": round(cuts[18], 4)}


def summary(timings: list[Timing]) -> dict[str, Any]:
    gaps = [g for t in timings for g in t.gaps]
    return {
        "requests": len(timings),
        "ttft_s": percentiles([t.ttft for t in timings]),
        "itl_s": percentiles(gaps),
        "ttft_all": sorted(round(t.ttft, 4) for t in timings),
        "itl_all": sorted(round(g, 5) for g in gaps),
        # per request, in completion order: prompt tokens (usage), TTFT, its gaps
        "requests_all": [
            [t.prompt_tokens, round(t.ttft, 4), [round(g, 5) for g in t.gaps]] for t in timings
        ],
    }


def table(results: dict[str, Any]) -> str:
    """One run's comparison as a Markdown table."""
    real, sim = results["real"], results["sim"]
    lines = [
        "| measure | real llama-server | simulated | sim / real |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label in (("ttft_s", "TTFT"), ("itl_s", "inter-token latency")):
        for p in ("p50", "p95"):
            r, s = real[key][p], sim[key][p]
            lines.append(f"| {label} {p} | {r * 1000:.0f} ms | {s * 1000:.0f} ms | {s / r:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
        (axes[0], "ttft_all", "TTFT"),
        (axes[1], "itl_all", "inter-token latency"),
    ):
        for name, style in (("real", "-"), ("sim", "--")):
            values = [v * 1000 for v in results[name][key] if v > 0]
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], style, label=name)
        if key == "itl_all":  # most gaps near the decode step, a few a whole prefill
            ax.set_xscale("log")
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylabel("fraction of requests" if key == "ttft_all" else "fraction of tokens")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"llama-server vs sim-engine --profile {results['profile']}, same load "
                 f"({results['real']['requests']} requests)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def conditions_line(machine: dict[str, Any]) -> str:
    return (f"{machine['wall_s']:.0f} s, load average {machine['loadavg_1m_start']}"
            f"→{machine['loadavg_1m_end']}, CPU cores busy: engine {machine['engine_cores']}, "
            f"client {machine['client_cores']}, others {machine['others_cores']}")  # fmt: skip


def report(document: dict[str, Any]) -> str:
    """calibration.md: the fit's conditions, then every run's table and conditions."""
    lines: list[str] = []
    if document.get("fit"):
        lines += [f"Fit: {conditions_line(document['fit']['machine'])}.", ""]
    for n, run in enumerate(document["runs"], 1):
        lines += [f"Run {n} ({run['real']['requests']} requests):", "", table(run)]
        for name in ("real", "sim"):
            lines.append(f"- {name}: {conditions_line(run['machine'][name])}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = prompts(args)
    document: dict[str, Any] = {"profile": args.profile, "load": vars(args), "runs": []}
    with tempfile.TemporaryDirectory(prefix="calibration-") as tmp:
        if args.fit:
            document["fit"] = refit(args.profile, Path(tmp, "fit.log"))
        for n in range(1, args.runs + 1):
            run: dict[str, Any] = {"profile": args.profile, "machine": {}}
            port = free_port()
            real = real_command(port)
            run["real"], run["machine"]["real"] = run_and_sum(
                real, port, work, args, Path(tmp, "real.log")
            )
            port = free_port()
            sim = [sys.executable, "-m", "llmsvc", "sim-engine", "--profile", args.profile,
                   "--model-name", MODEL, "--port", str(port), "--seed", str(n)]  # fmt: skip
            run["sim"], run["machine"]["sim"] = run_and_sum(
                sim, port, work, args, Path(tmp, "sim.log")
            )
            document["runs"].append(run)
            plot(run, out / ("calibration.png" if n == 1 else f"calibration-run{n}.png"))
            print(f"run {n}:\n{table(run)}", flush=True)
            # written after every run, so that an interrupted series keeps what it measured
            (out / "calibration.json").write_bytes(
                orjson.dumps(document, option=orjson.OPT_INDENT_2)
            )
            (out / "calibration.md").write_text(report(document))
    print(report(document))
    return 0


def run_and_sum(command: list[str], port: int, work: list[str], args: argparse.Namespace,
                log: Path) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    timings, machine = run_one(command, port, MODEL, work, args, log)
    return summary(timings), machine


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
