"""What the harness puts in front of the backends, and how each is installed and started.

Every target is a command line started in its own process group; the harness
counts the CPU of that process and all its descendants. Third-party software
goes into its own venv under ``.bench/`` (never into ``.venv``), installed on
first use; nginx and wrk are Debian packages (``apt-get install nginx-light wrk``).
A target that cannot be installed or started is reported with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from benchmarks.harness.loadgen import BENCH_KEY

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / ".bench"
LLMSVC = [sys.executable, "-m", "llmsvc"]


class Unavailable(Exception):
    """The target cannot run here; the message says why (one line)."""


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    command: Callable[[int, Sequence[int], Path], list[str]]  # (port, backend ports, workdir)
    install: Callable[[], None] = lambda: None
    startup_s: float = 20.0
    env: tuple[tuple[str, str], ...] = ()  # added to the environment of its process


def _backend_records(ports: Sequence[int], count: int | None = None) -> list[dict[str, object]]:
    """``count`` records (default: one per port), spread over ``ports`` in turn."""
    total = count or len(ports)
    return [
        {
            "name": f"b{i}",
            "host": "127.0.0.1",
            "port": ports[i % len(ports)],
            "metadata": {"models": ["bench-model"]},
        }
        for i in range(total)
    ]


def llmsvc_command(
    workers: int, records: int | None = None, extra: Sequence[str] = (), source: Path | None = None
) -> Callable[..., list[str]]:
    """The router with ``extra`` flags; with ``source``, that tree's ``src`` (``PYTHONPATH``,
    ahead of the venv's editable install) instead of this checkout's."""

    def command(port: int, backends: Sequence[int], work: Path) -> list[str]:
        static = work / f"services-{records or len(backends)}.json"
        static.write_bytes(orjson.dumps({"services": _backend_records(backends, records)}))
        prefix = ["env", f"PYTHONPATH={source / 'src'}"] if source else []  # env execs: same pid
        return [
            *prefix, *LLMSVC, "router", "--port", str(port), "--static-services", str(static),
            "--workers", str(workers), "--log-level", "warning", *extra,
        ]  # fmt: skip

    return command


class BaseTree:
    """An earlier commit of this repository (``--base``) checked out into a temporary
    ``git worktree`` on first use and removed by :meth:`remove`: its router runs from that
    tree's source on the same venv, for the cost comparison of issue 13 (CPU per request
    against the commit before flow control, in the same run and under the same load)."""

    def __init__(self, ref: str = "23d7c55") -> None:
        self.ref = ref
        self.path: Path | None = None

    def install(self) -> None:
        if self.path is not None:
            return
        path = Path(tempfile.mkdtemp(prefix="llmsvc-base-")) / "tree"
        add = ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), self.ref]
        done = subprocess.run(add, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            shutil.rmtree(path.parent, ignore_errors=True)
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise Unavailable(f"git worktree add {self.ref}: {why}")
        self.path = path

    def command(self, port: int, backends: Sequence[int], work: Path) -> list[str]:
        if self.path is None:
            raise Unavailable("no worktree for the base commit")
        return llmsvc_command(1, source=self.path)(port, backends, work)

    def remove(self) -> None:
        if self.path is None:
            return
        remove = ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(self.path)]
        subprocess.run(remove, capture_output=True, timeout=60)
        shutil.rmtree(self.path.parent, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)
        self.path = None


BASE = BaseTree()


def direct_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    return []  # no process: the load goes to the first backend itself


# --- nginx -------------------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    upstream backends {{
        {servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def apt_install(*packages: str) -> None:
    """Install Debian packages when we may (root, apt-get present); quietly skip otherwise."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(step, capture_output=True, env=env, timeout=300, check=True)


def nginx_install() -> None:
    if not _nginx_binary():
        apt_install("nginx-light")
    if not _nginx_binary():
        raise Unavailable("nginx is not installed (apt-get install -y nginx-light)")


def _nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


def nginx_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    servers = "\n        ".join(f"server 127.0.0.1:{p};" for p in backends)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, servers=servers, port=port))
    return [_nginx_binary() or "nginx", "-p", str(work), "-c", str(conf)]


# --- third-party Python routers, each in its own venv ----------------------------------------


def _venv_install(
    name: str, *requirements: str, python: str = sys.executable, timeout: float = 900.0
) -> Path:
    """The venv ``.bench/<name>`` with ``requirements`` installed (once)."""
    venv = BENCH_DIR / name
    stamp = venv / ".installed"
    if stamp.exists():
        return venv
    log = BENCH_DIR / f"{name}.install.log"
    BENCH_DIR.mkdir(exist_ok=True)
    with log.open("w") as out:
        steps = [
            [python, "-m", "venv", "--clear", str(venv)],
            [str(venv / "bin" / "pip"), "install", "--quiet", *requirements],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise Unavailable(f"pip install {' '.join(requirements)} timed out") from None
            if done.returncode != 0:
                lines = log.read_text(errors="replace").strip().splitlines()
                reason = _install_failure(lines) or f"exit {done.returncode}"
                raise Unavailable(f"pip install {' '.join(requirements)} failed: {reason}")
    stamp.touch()
    return venv


def _install_failure(lines: list[str]) -> str | None:
    """The most telling line of a failed pip install's output."""
    for cause in ("fatal:", "requires a different python", "no matching distribution", "error:"):
        found = [ln.strip() for ln in lines if cause in ln.lower()]
        if found:
            return found[-1][:300]
    return None


def litellm_install() -> None:
    _venv_install("litellm", "litellm[proxy]")


LITELLM_CONF = """\
model_list:
{models}
router_settings:
  routing_strategy: simple-shuffle
litellm_settings:
  drop_params: true
general_settings:
  master_key: {key}
"""


def litellm_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    models = "\n".join(
        f"  - model_name: bench-model\n    litellm_params:\n      model: openai/bench-model\n"
        f"      api_base: http://127.0.0.1:{p}/v1\n      api_key: unused"
        for p in backends
    )
    conf = work / "litellm.yaml"
    conf.write_text(LITELLM_CONF.format(models=models, key=BENCH_KEY))
    binary = BENCH_DIR / "litellm" / "bin" / "litellm"
    return [str(binary), "--config", str(conf), "--host", "127.0.0.1", "--port", str(port)]


def vllm_router_install() -> None:
    _venv_install("vllm-router", "vllm-router")


def vllm_router_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    binary = BENCH_DIR / "vllm-router" / "bin" / "vllm-router"
    return [
        str(binary), "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin",
        "--worker-urls", *(f"http://127.0.0.1:{p}" for p in backends),
        "--log-level", "warning",
    ]  # fmt: skip


PRODUCTION_STACK = "vllm-router @ git+https://github.com/vllm-project/production-stack.git"


def _python312() -> str:
    """A Python >= 3.12 (production-stack's router needs it)."""
    found = [shutil.which(f"python3.{minor}") for minor in (12, 13)]
    found += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.1[23]*/bin/python3"))
    for candidate in found:
        if candidate and subprocess.run([candidate, "-V"], capture_output=True).returncode == 0:
            return candidate
    raise Unavailable("needs Python >= 3.12, none found")


def production_stack_install() -> None:
    # Not on the package index under its own name: PyPI's vllm-router is the Rust router.
    _venv_install("production-stack", PRODUCTION_STACK, python=_python312(), timeout=300.0)


def production_stack_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    binary = BENCH_DIR / "production-stack" / "bin" / "vllm-router"
    return [
        str(binary), "--host", "127.0.0.1", "--port", str(port),
        "--service-discovery", "static",
        "--static-backends", ",".join(f"http://127.0.0.1:{p}" for p in backends),
        "--static-models", ",".join("bench-model" for _ in backends),
        "--routing-logic", "roundrobin",
    ]  # fmt: skip


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("direct", "the first backend alone, no proxy", direct_command),
        Target("nginx", "nginx 1 worker, upstream keepalive 64", nginx_command, nginx_install),
        Target("llmsvc-1w", "llmsvc router, 1 process", llmsvc_command(1)),
        Target("llmsvc-2w", "llmsvc router --workers 2", llmsvc_command(2)),
        Target("llmsvc-base", "llmsvc router at --base, 1 process", BASE.command, BASE.install),
        Target(
            "llmsvc-slots",
            "llmsvc router, 1 process, --backend-concurrency 64 (slots, never all taken)",
            llmsvc_command(1, extra=("--backend-concurrency", "64")),
        ),
        Target(
            "llmsvc-queued",
            "llmsvc router, 1 process, --backend-concurrency 4 (requests wait in its queue)",
            llmsvc_command(1, extra=("--backend-concurrency", "4")),
        ),
        Target(
            "vllm-router",
            "vllm-router (Rust, vllm-project/router) from PyPI, round_robin",
            vllm_router_command,
            vllm_router_install,
        ),
        Target(
            "litellm",
            "LiteLLM proxy (litellm[proxy]) from PyPI, simple-shuffle over both backends",
            litellm_command,
            litellm_install,
            startup_s=90.0,
            # Its model cost map from its package, not fetched from GitHub; no telemetry.
            env=(("LITELLM_LOCAL_MODEL_COST_MAP", "True"), ("LITELLM_TELEMETRY", "False")),
        ),
        Target(
            "production-stack",
            "vLLM production-stack's Python router (from its git repository)",
            production_stack_command,
            production_stack_install,
        ),
    )
}
