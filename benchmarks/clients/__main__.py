"""Real benchmark clients (guidellm, inference-perf) through the llmsvc router and direct.

    .venv/bin/python benchmarks/clients                       # make bench-clients
    .venv/bin/python benchmarks/clients --fleets sim --tools guidellm --seconds 5

For each fleet (``sim``: two simulated engines; ``llama.cpp``: one real
``llama-server`` with SmolLM2-135M from ``make real-engine``'s cache, when it is
there) a registry, a router and babysitters are started as local processes
(:mod:`benchmarks.clients.stack`); each tool (:mod:`benchmarks.clients.tools`)
then runs against the router and directly against the first engine. The
tools' own figures (:mod:`benchmarks.clients.parse`) and the router's status
counts for each run go to ``--out``/results.json and results.md, and with
``--doc`` into the table of docs/performance.md. Exit status 1 when a tool
reported an error through the router.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the root: benchmarks.*

from benchmarks.chaos.table import replace_table
from benchmarks.clients import parse, report, stack, tools
from benchmarks.common.procfs import machine
from benchmarks.harness.targets import BENCH_DIR, Unavailable

ROOT = Path(__file__).resolve().parents[2]
FLEETS = ("sim", "llama.cpp")
TARGETS = ("router", "direct")


def _fleet(name: str) -> tuple[stack.Fleet, tuple[tuple[str, str], ...]]:
    """The fleet and the environment of its babysitters."""
    if name == "sim":
        return stack.sim_fleet(), ()
    from scripts.real_engine import llama_server_path, model_path

    server, gguf = llama_server_path(), model_path()
    for path in (server, gguf):
        if not path.is_file():
            raise Unavailable(f"no {path} (make real-engine)")
    return stack.llama_fleet(gguf), stack.engine_env([server])


def one_run(
    tool: tools.Tool, venv: Path, st: stack.Stack, target: str, load: tools.Load, out: Path
) -> dict[str, Any]:
    url = st.router if target == "router" else st.engine
    before = stack.router_requests(st.router)
    result = tools.run(tool, venv, url, st.model, load, out)
    after = stack.router_requests(st.router)
    figures = parse.PARSERS[tool.name](orjson.loads(result.read_bytes()))
    entry: dict[str, Any] = {"figures": dataclasses.asdict(figures)}
    if target == "router":
        entry["router_statuses"] = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return entry


def fleet_runs(name: str, args: argparse.Namespace, venvs: dict[str, Path | str]) -> list[Any]:
    load = args.loads[name]
    label = {"fleet": name}
    try:
        fleet, env = _fleet(name)
        with stack.running(fleet, args.out / name, env) as st:
            runs = []
            for tool_name in args.tools:
                for target in TARGETS:
                    entry = {**label, "tool": tool_name, "target": target}
                    run_load = dataclasses.replace(load, seed=1 + TARGETS.index(target))
                    venv = venvs[tool_name]
                    if isinstance(venv, str):
                        runs.append({**entry, "unavailable": venv})
                        continue
                    print(f"{name}: {tool_name} -> {target} ...", flush=True)
                    out = args.out / name / f"{tool_name}-{target}"
                    try:
                        entry |= one_run(tools.TOOLS[tool_name], venv, st, target, run_load, out)
                    except (Unavailable, parse.ResultError) as exc:
                        entry |= {"unavailable": str(exc), "failed": True}
                    print(f"  {report.row(entry).strip()}", flush=True)
                    runs.append(entry)
            return runs
    except Unavailable as exc:
        print(f"{name}: not run: {exc}", flush=True)
        return [
            {**label, "tool": t, "target": target, "unavailable": str(exc)}
            for t in args.tools
            for target in TARGETS
        ]


def install(names: list[str]) -> dict[str, Path | str]:
    """Each tool's venv, or the one-line reason it cannot be installed."""
    venvs: dict[str, Path | str] = {}
    for name in names:
        print(f"installing {name} (once, into .bench/{name}) ...", flush=True)
        try:
            venvs[name] = tools.TOOLS[name].install()
        except Unavailable as exc:
            venvs[name] = f"unavailable: {exc}"
            print(f"{name}: {venvs[name]}", flush=True)
    return venvs


def tool_versions() -> str:
    return f"{tools.GUIDELLM}, {tools.INFERENCE_PERF}"


def llmsvc_commit() -> str:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "src")
    return (git("rev-parse", "--short", "HEAD") or "?") + (" + uncommitted" if dirty else "")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", default=",".join(FLEETS), help="sim,llama.cpp")
    parser.add_argument("--tools", default=",".join(tools.TOOLS), help="guidellm,inference-perf")
    parser.add_argument("--seconds", type=int, default=20, help="per run over the sim fleet")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams, sim fleet")
    parser.add_argument("--llama-seconds", type=int, default=20)
    parser.add_argument("--llama-streams", type=int, default=2, help="llama-server has 2 slots")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "clients")
    parser.add_argument("--doc", type=Path, help="replace the table in this page")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # the tools run in their own directories under it
    args.fleets = [f for f in args.fleets.split(",") if f]
    args.tools = [t for t in args.tools.split(",") if t]
    for name in args.fleets:
        if name not in FLEETS:
            parser.error(f"unknown fleet {name!r} (choose from {', '.join(FLEETS)})")
    for name in args.tools:
        if name not in tools.TOOLS:
            parser.error(f"unknown tool {name!r} (choose from {', '.join(tools.TOOLS)})")
    args.loads = {
        "sim": tools.Load(args.seconds, args.streams, 256, 32),
        "llama.cpp": tools.Load(args.llama_seconds, args.llama_streams, 128, 16),
    }
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = {**machine(), "loadavg_1m": loadavg(), "utc": _now()}
    venvs = install(args.tools)
    runs = [r for name in args.fleets for r in fleet_runs(name, args, venvs)]
    results = {
        "command": "python benchmarks/clients " + " ".join(sys.argv[1:] if argv is None else argv),
        "llmsvc_commit": llmsvc_commit(),
        "tool_versions": tool_versions(),
        "machine_at_start": started,
        "loadavg_1m_at_end": loadavg(),
        "loads": {f: dataclasses.asdict(args.loads[f]) for f in args.fleets},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    table = report.markdown(results)
    (args.out / "results.md").write_text(table)
    print("\n" + table)
    if args.doc:
        replace_table(args.doc, table, report.START, report.END)
    return 1 if any(map(_failed, runs)) else 0


def _failed(run: dict[str, Any]) -> bool:
    """A tool that failed to run where it could, or reported errors through the router."""
    errors = run.get("figures", {}).get("errors") and run["target"] == "router"
    return bool(run.get("failed") or errors)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _exit_on_sigterm(signum: int, _: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: every process of the stack is stopped


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    raise SystemExit(main())
