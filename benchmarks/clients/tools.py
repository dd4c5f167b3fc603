"""The two benchmark clients we did not write, installed and run as their users run them.

- **guidellm** (vLLM's benchmark tool, PyPI ``guidellm``) in ``.bench/guidellm``;
- **inference-perf** (the Kubernetes serving working group's, PyPI
  ``inference-perf``, Python >= 3.12, found with pyenv) in ``.bench/inference-perf``.

Each is pinned and installed once (``harness.targets._venv_install``: a stamp
file marks a finished install), and both count tokens with the tiny tokenizer
``tokenizer.py`` trains into ``.bench/tokenizer`` (no hub is reachable:
``HF_HUB_OFFLINE=1``). A tool that cannot be installed is
:class:`~benchmarks.harness.targets.Unavailable` with a one-line reason.
:func:`run` starts one tool against one URL and returns the path of the tool's
own result file.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from benchmarks.common.processes import start, stop
from benchmarks.harness.targets import BENCH_DIR, Unavailable, _python312, _venv_install

from llmsvc.simengine.model import VOCABULARY

GUIDELLM = "guidellm==0.8.1"
INFERENCE_PERF = "inference-perf==0.7.0"
TOKENIZER_DIR = BENCH_DIR / "tokenizer"
HERE = Path(__file__).resolve().parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@dataclass(frozen=True)
class Load:
    """One run's load: concurrent streams for a while, fixed prompt and output sizes."""

    seconds: int = 20
    streams: int = 8
    prompt_tokens: int = 256
    output_tokens: int = 32
    seed: int = 1  # of the prompts: runs against the same engine need other prompts, or
    # llama.cpp's prompt cache answers the second run's from the first's


@dataclass(frozen=True)
class Tool:
    name: str
    install: Callable[[], Path]  # the venv
    command: Callable[[Path, str, str, Load, Path], list[str]]  # venv, url, model, load, out
    result: str  # the tool's own result file, under out


def _tokenizer(venv: Path) -> Path:
    """``.bench/tokenizer``, trained with ``venv``'s Python the first time."""
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        done = subprocess.run(
            [str(venv / "bin" / "python"), str(HERE / "tokenizer.py"), str(TOKENIZER_DIR),
             *VOCABULARY],
            capture_output=True, text=True, timeout=300, env={**os.environ, **OFFLINE},
        )  # fmt: skip
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
            raise Unavailable(f"training the tokenizer failed: {lines[-1][:300]}")
    return TOKENIZER_DIR


def guidellm_install() -> Path:
    venv = _venv_install("guidellm", GUIDELLM, timeout=1800.0)
    _tokenizer(venv)
    return venv


def inference_perf_install() -> Path:
    venv = _venv_install("inference-perf", INFERENCE_PERF, python=_python312())
    _tokenizer(venv)
    return venv


def guidellm_command(venv: Path, url: str, model: str, load: Load, out: Path) -> list[str]:
    """``guidellm run``: chat completions, streamed, ``load.streams`` concurrent streams."""
    data = (
        f"kind=synthetic_text,prompt_tokens={load.prompt_tokens},output_tokens={load.output_tokens}"
    )
    return [
        str(venv / "bin" / "guidellm"), "run",
        "--backend", f"kind=openai_http,target={url},model={model},stream=true",
        "--profile", f"kind=concurrent,streams={load.streams}",
        "--constraint", f"kind=max_duration,seconds={load.seconds}",
        "--tokenizer", f"kind=huggingface_auto,model={TOKENIZER_DIR}",
        "--data", data,
        "--seed", f"kind=static,value={load.seed}",
        "--output", f"kind=json,path={out / 'benchmarks.json'}",
        "--output", "kind=console",
    ]  # fmt: skip


def inference_perf_config(url: str, model: str, load: Load, out: Path) -> dict[str, object]:
    """inference-perf's config: streamed completions (its ``random`` data needs
    ``api.type: completion``), ``load.streams`` concurrent, about ``load.seconds`` long.

    Its concurrent load is a number of requests, not a duration: one stream's share
    is a request a second (the sim fleet answers 32 tokens in about one), so the
    run lasts about ``seconds`` there and longer over a slower engine."""
    fixed = {"type": "fixed", "min": 1, "max": 1 << 16}
    return {
        "api": {"type": "completion", "streaming": True},
        "data": {
            "type": "random",
            "input_distribution": {**fixed, "mean": load.prompt_tokens},
            "output_distribution": {**fixed, "mean": load.output_tokens},
        },
        "load": {
            "type": "concurrent",
            "stages": [
                {"num_requests": load.seconds * load.streams, "concurrency_level": load.streams}
            ],
            "num_workers": 1,
            "base_seed": load.seed,  # of its prompts too
        },
        "server": {"type": "vllm", "model_name": model, "base_url": url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(TOKENIZER_DIR)},
        "storage": {"local_storage": {"path": str(out)}},
        "report": {
            "request_lifecycle": {
                "summary": True,
                "per_stage": False,
                "per_request": False,
                "use_server_output_tokens": True,  # our tokenizer is no model's: the engine's count
            },
        },
    }


def inference_perf_command(venv: Path, url: str, model: str, load: Load, out: Path) -> list[str]:
    config = out / "config.yml"
    config.write_text(yaml.safe_dump(inference_perf_config(url, model, load, out)))
    return [str(venv / "bin" / "inference-perf"), "-c", str(config)]


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("guidellm", guidellm_install, guidellm_command, "benchmarks.json"),
        Tool(
            "inference-perf",
            inference_perf_install,
            inference_perf_command,
            "summary_lifecycle_metrics.json",
        ),
    )
}


def run(tool: Tool, venv: Path, url: str, model: str, load: Load, out: Path) -> Path:
    """Run ``tool`` against ``url``, its output in ``out/run.log``: its result file."""
    out = out.resolve()  # the tools are given absolute paths
    out.mkdir(parents=True, exist_ok=True)
    command = tool.command(venv, url, model, load, out)
    (out / "command.txt").write_text(" ".join(command) + "\n")
    limit = 10 * load.seconds + 180  # startup (torch, datasets) and a slow engine
    proc = start(command, out / "run.log", tuple(OFFLINE.items()))
    try:  # in its own process group: inference-perf's worker processes go with it
        returncode = proc.wait(limit)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{tool.name} ran past {limit} s") from None
    finally:
        stop(proc)
    result = out / tool.result
    if returncode != 0 or not result.exists():
        tail = (out / "run.log").read_text(errors="replace").strip().splitlines()
        raise Unavailable(f"{tool.name} exit {returncode}: {(tail or ['?'])[-1][:300]}")
    return result
