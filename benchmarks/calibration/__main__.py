"""``python -m benchmarks.calibration``: the simulated engine against the real one, same load.

Starts the real ``llama-server`` (the cached build of ``make real-engine``,
``-c 2048 -np 2 -t 1 --metrics``: one thread, as the profile was fitted, since
two threads on a shared 2-core machine wait on each other) and then ``llmsvc
sim-engine --profile P``, one at a time; sends each the same closed-loop load
(``--concurrency`` streams, the same seeded prompts, unique so that nothing is
cached); and writes the TTFT and inter-token-latency percentiles of both, and
their CDFs, to ``--out`` (docs/simulated-engine/: calibration.json, .md, .png).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from benchmarks.common.ports import free_port
from benchmarks.common.processes import last_line, start, stop
from scripts.real_engine import llama_server_path, model_path

from llmsvc.simengine.probe import Prober, Timing, make_prompt

MODEL = "SmolLM2-135M-Instruct.Q4_1"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibration", description=__doc__)
    parser.add_argument("--out", default="docs/simulated-engine")
    parser.add_argument("--profile", default="llama.cpp-smollm2-cpu")
    parser.add_argument("--requests", type=int, default=16)
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
            log: Path) -> list[Timing]:  # fmt: skip
    proc = start(command, log)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(wait_ready(url))
        return asyncio.run(closed_loop(url, model, work, args))
    except BaseException:
        print(f"{command[0]}: {last_line(log)}", file=sys.stderr)
        raise
    finally:
        stop(proc)


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
    }


def table(results: dict[str, Any]) -> str:
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
    fig.suptitle(f"llama-server vs sim-engine --profile {results['profile']}, same load")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = prompts(args)
    results: dict[str, Any] = {"profile": args.profile, "load": vars(args)}
    with tempfile.TemporaryDirectory(prefix="calibration-") as tmp:
        port = free_port()
        real = [str(llama_server_path()), "-m", str(model_path()), "-c", "2048", "-np", "2",
                "-t", "1", "--metrics", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        results["real"] = summary(run_one(real, port, MODEL, work, args, Path(tmp, "real.log")))
        port = free_port()
        sim = [sys.executable, "-m", "llmsvc", "sim-engine", "--profile", args.profile,
               "--model-name", MODEL, "--port", str(port)]  # fmt: skip
        results["sim"] = summary(run_one(sim, port, MODEL, work, args, Path(tmp, "sim.log")))
    (out / "calibration.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    (out / "calibration.md").write_text(table(results))
    plot(results, out / "calibration.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
