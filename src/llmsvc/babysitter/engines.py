"""Engine adapters: pure functions from settings to a command line and environment.

Every adapter returns an :class:`EngineSpec`; nothing here starts a process.
The table of engines (command, environment, probe paths) is in ``docs/engines.md``.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from llmsvc.babysitter import concurrency
from llmsvc.babysitter.settings import BabysitterSettings

HEALTH_PATH = "/health"
MODELS_PATHS = ("/v1/models", "/models")
# A GGUF file is named for its model; so is an InfiniLM-Rust service config.
STRIPPED_SUFFIXES = (".gguf", ".toml")

# The least time an engine's health check may take. SGLang's /health runs a one-token
# generation by default (SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION) and looks for the
# scheduler's output once a second, so a live SGLang answers after 1-2 s; every other
# engine's /health is answered by its HTTP server alone (see docs/babysitter.md).
HEALTH_TIMEOUT_FLOOR: dict[str, float] = {"sglang": 3.0}

# The engine's visible-devices variables, per engine, when --visible-devices-env is not given.
# InfiniLM runs on several vendors: MetaX reads HPCC_VISIBLE_DEVICES, NVIDIA CUDA_VISIBLE_DEVICES;
# each ignores the other's variable, so both are set.
VISIBLE_DEVICES: dict[str, tuple[str, ...]] = {
    "vllm": ("CUDA_VISIBLE_DEVICES",),
    "sglang": ("CUDA_VISIBLE_DEVICES",),
    "llama.cpp": ("CUDA_VISIBLE_DEVICES",),
    "infinilm": ("HPCC_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"),
    "infinilm-rust": ("HPCC_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"),
    "sim": ("CUDA_VISIBLE_DEVICES",),
    "command": ("CUDA_VISIBLE_DEVICES",),
}


# Engines whose /metrics the babysitter reads to see them idle (--idle-timeout), and the flag
# that turns those metrics on where they are off by default.
IDLE_METRICS_FLAG: dict[str, str | None] = {
    "vllm": None,
    "sglang": "--enable-metrics",
    "llama.cpp": "--metrics",
    "sim": None,
}
# Engines with vLLM's sleep mode (POST /sleep, /wake_up): --standby sleep.
SLEEP_MODE = ("vllm", "sim")


class EngineConfigError(ValueError):
    """The settings cannot make an engine command line; the message is one line."""


@dataclass(frozen=True)
class EngineSpec:
    """How to launch and probe one engine."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = HEALTH_PATH
    models_paths: tuple[str, ...] = MODELS_PATHS
    health_timeout_floor: float = 0.0
    """Seconds a health check gets at least, whatever ``--health-timeout`` says."""
    max_concurrency: int | None = None
    """Requests the engine runs at once, from its command line (:mod:`concurrency`); None:
    unknown."""
    asks_props: bool = False
    """No flag gave ``max_concurrency``: read llama.cpp's ``/props`` once it is ready."""


@dataclass(frozen=True)
class Identity:
    """Names and addresses derived from the settings."""

    model_name: str | None
    name: str
    host: str  # registered
    probe_host: str  # what the babysitter connects to
    port: int

    @property
    def label(self) -> str:
        """The ``model_name`` metric label (never empty)."""
        return self.model_name or self.name

    def engine_url(self) -> str:
        return f"http://{_bracket(self.probe_host)}:{self.port}"

    def advertised_url(self) -> str:
        return f"http://{_bracket(self.host)}:{self.port}"

    def babysitter_url(self) -> str:
        return f"http://{_bracket(self.host)}:{self.port + 1}"


def default_model_name(model: str | None) -> str | None:
    """The last part of a model path or id; a ``.gguf`` file's (or a ``.toml`` config's) stem."""
    if not model:
        return None
    last = PurePosixPath(model.rstrip("/")).name or model
    for suffix in STRIPPED_SUFFIXES:
        if last.lower().endswith(suffix) and len(last) > len(suffix):
            return last[: -len(suffix)]
    return last


def identity(
    settings: BabysitterSettings, *, hostname: Callable[[], str] = socket.gethostname
) -> Identity:
    model_name = settings.model_name or default_model_name(settings.model)
    wildcard = settings.host in ("0.0.0.0", "::", "")
    host = settings.advertise_host or (hostname() if wildcard else settings.host)
    probe_host = "127.0.0.1" if wildcard else settings.host
    name = settings.name or f"{model_name or settings.engine}@{host}:{settings.port}"
    return Identity(
        model_name=model_name, name=name, host=host, probe_host=probe_host, port=settings.port
    )


def build_engine(
    settings: BabysitterSettings,
    extra: Sequence[str],
    *,
    python: str = sys.executable,
    environ: Mapping[str, str] | None = None,
) -> EngineSpec:
    """The engine's command line and environment; :class:`EngineConfigError` if impossible.

    ``environ`` (default ours) is what the engine inherits, for ``max_concurrency``.
    """
    extra = list(extra)
    ident = identity(settings, hostname=lambda: settings.host)
    if settings.engine == "command":
        argv = _command(settings, ident, extra)
    else:
        if not settings.model:
            raise EngineConfigError(f"--model is required for --engine {settings.engine}")
        argv = _ADAPTERS[settings.engine](settings, ident, python) + extra
    argv += _standby_args(settings, argv)
    floor = HEALTH_TIMEOUT_FLOOR.get(settings.engine, 0.0)
    env = visible_devices_env(settings)
    if settings.engine == "vllm" and _sleeps(settings):
        env["VLLM_SERVER_DEV_MODE"] = "1"  # serves /sleep, /wake_up, /is_sleeping
    inherited = {**(os.environ if environ is None else environ), **env}
    slots = concurrency.max_concurrency(settings.engine, argv, inherited)
    return EngineSpec(
        argv=tuple(argv),
        env=env,
        health_timeout_floor=floor,
        max_concurrency=slots,
        asks_props=slots is None and settings.engine in concurrency.ASKS_PROPS,
    )


def _sleeps(settings: BabysitterSettings) -> bool:
    return settings.idle_timeout > 0 and settings.standby == "sleep"


def _standby_args(settings: BabysitterSettings, argv: Sequence[str]) -> list[str]:
    """What ``--idle-timeout`` and ``--standby sleep`` need of the engine's command line: its
    metrics on (llama.cpp, SGLang), its sleep mode (vLLM); refused where it cannot work."""
    if settings.idle_timeout <= 0:
        return []
    engine = settings.engine
    if engine not in IDLE_METRICS_FLAG:
        known = ", ".join(IDLE_METRICS_FLAG)
        raise EngineConfigError(
            f"--idle-timeout needs the engine's metrics to see it idle, and --engine {engine} "
            f"has none the babysitter reads (it reads {known})"
        )
    if _sleeps(settings) and engine not in SLEEP_MODE:
        raise EngineConfigError(
            f"--standby sleep needs an engine with a sleep mode ({', '.join(SLEEP_MODE)}); "
            f"--engine {engine} has none: use --standby stop"
        )
    extra: list[str] = []
    flag = IDLE_METRICS_FLAG[engine]
    if flag is not None and flag not in argv:
        extra.append(flag)
    if engine == "vllm" and _sleeps(settings) and "--enable-sleep-mode" not in argv:
        extra.append("--enable-sleep-mode")
    return extra


def visible_devices_env(settings: BabysitterSettings) -> dict[str, str]:
    if not settings.gpus:
        return {}
    names = (
        (settings.visible_devices_env,)
        if settings.visible_devices_env
        else VISIBLE_DEVICES[settings.engine]
    )
    return {name: ",".join(settings.gpus) for name in names}


def _name(ident: Identity) -> str:
    return ident.model_name or ident.name


def _vllm(s: BabysitterSettings, ident: Identity, _: str) -> list[str]:
    argv = ["vllm", "serve", str(s.model), "--host", s.host, "--port", str(s.port)]
    argv += ["--served-model-name", _name(ident)]
    if s.gpus:
        argv += ["--tensor-parallel-size", str(len(s.gpus))]
    return argv


def _sglang(s: BabysitterSettings, ident: Identity, _: str) -> list[str]:
    # The engine's own interpreter: the first python3 on PATH, not the babysitter's.
    argv = ["python3", "-m", "sglang.launch_server", "--model-path", str(s.model)]
    argv += ["--host", s.host, "--port", str(s.port), "--served-model-name", _name(ident)]
    if s.gpus:
        argv += ["--tp-size", str(len(s.gpus))]
    return argv


def _llama_cpp(s: BabysitterSettings, ident: Identity, _: str) -> list[str]:
    argv = ["llama-server", "-m", str(s.model), "--host", s.host, "--port", str(s.port)]
    argv += ["--alias", _name(ident)]
    if s.gpus:
        argv += ["-ngl", "999"]
    return argv


def _infinilm(s: BabysitterSettings, ident: Identity, _: str) -> list[str]:
    argv = ["python3", "-m", "infinilm.server", "--model-path", str(s.model)]
    argv += ["--host", s.host, "--port", str(s.port), "--ndev", str(max(1, len(s.gpus)))]
    return argv


def _infinilm_rust(s: BabysitterSettings, ident: Identity, _: str) -> list[str]:
    # --model is the service's TOML config; the model name and devices come from it.
    return ["xtask", "service", str(s.model), "-p", str(s.port)]


def _sim(s: BabysitterSettings, ident: Identity, python: str) -> list[str]:
    argv = [python, "-m", "llmsvc", "sim-engine", "--host", s.host, "--port", str(s.port)]
    return [*argv, "--model-name", _name(ident)]


def _command(s: BabysitterSettings, ident: Identity, extra: list[str]) -> list[str]:
    if not extra:
        raise EngineConfigError(
            "--engine command needs the command after '--', e.g. -- my-server --port {port}"
        )
    values = {
        "{port}": str(s.port),
        "{host}": s.host,
        "{model}": s.model or "",
        "{model_name}": ident.model_name or "",
    }
    # Plain replacement, not str.format: engine arguments often carry JSON braces.
    pattern = re.compile("|".join(re.escape(k) for k in values))
    return [pattern.sub(lambda m: values[m.group(0)], arg) for arg in extra]


_Adapter = Callable[[BabysitterSettings, Identity, str], list[str]]

_ADAPTERS: dict[str, _Adapter] = {
    "vllm": _vllm,
    "sglang": _sglang,
    "llama.cpp": _llama_cpp,
    "infinilm": _infinilm,
    "infinilm-rust": _infinilm_rust,
    "sim": _sim,
}


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
