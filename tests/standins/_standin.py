"""Stand-in inference engines for the babysitter's tests.

Each stand-in (``vllm``, ``llama-server``, ``xtask`` on PATH; ``sglang`` and
``infinilm`` as modules on PYTHONPATH) appends what it was started with to the
file named by ``LLMSVC_STANDIN_RECORD`` (one JSON object a line: engine, argv,
the interpreter's whole command line, visible-devices variables), then
replaces itself with ``python -m llmsvc sim-engine`` serving the same host,
port and model name: the babysitter launches, probes and stops a real process
that answers like the real engine.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import PurePosixPath

RECORD_ENV = "LLMSVC_STANDIN_RECORD"
RECORDED_ENV = ("CUDA_VISIBLE_DEVICES", "HPCC_VISIBLE_DEVICES")


def _value(argv: Sequence[str], *flags: str, default: str | None = None) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg in flags:
            return argv[i + 1]
    return default


def _stem(path: str) -> str:
    name = PurePosixPath(path.rstrip("/")).name
    return name.rsplit(".", 1)[0] if name.endswith((".gguf", ".toml")) else name


def _translate(engine: str, argv: list[str]) -> tuple[str, str, str]:
    """(host, port, model name) from the engine's own command line."""
    if engine == "vllm":  # vllm serve MODEL --host H --port P --served-model-name N
        name = _value(argv, "--served-model-name") or _stem(argv[1])
    elif engine == "sglang":
        name = _value(argv, "--served-model-name") or _stem(_value(argv, "--model-path") or "")
    elif engine == "llama.cpp":
        name = _value(argv, "--alias") or _stem(_value(argv, "-m") or "")
    elif engine == "infinilm":  # serves the model under its directory's name
        name = _stem(_value(argv, "--model-path") or "")
    elif engine == "infinilm-rust":  # xtask service CONFIG.toml -p PORT; name from the config
        name = _stem(argv[1])
        return "127.0.0.1", str(_value(argv, "-p")), name
    else:
        raise SystemExit(f"stand-in: unknown engine {engine}")
    return str(_value(argv, "--host", default="127.0.0.1")), str(_value(argv, "--port")), name


def main(engine: str) -> None:
    argv = sys.argv[1:]
    record = os.environ.get(RECORD_ENV)
    if record:
        env = {k: os.environ[k] for k in RECORDED_ENV if k in os.environ}
        with open(record, "a") as f:
            line = {"engine": engine, "argv": argv, "orig_argv": sys.orig_argv, "env": env}
            f.write(json.dumps(line) + "\n")
    host, port, name = _translate(engine, argv)
    sim = [sys.executable, "-m", "llmsvc", "sim-engine", "--host", host, "--port", port]
    os.execv(sys.executable, [*sim, "--model-name", name, "--time-scale", "0"])
