"""The proxies the fault harness puts in front of two backends, each set up to survive faults.

Each gets the same limits where it has them: 1 s to connect, 1 s to the first
byte, a stream that sends nothing for 1 s is given up, up to 2 further
backends tried, active health checks every 1 s where the proxy has them.
Installation reuses the proxy benchmark's (``benchmarks/harness/targets.py``):
Debian packages for nginx and HAProxy, a venv under ``.bench/`` for LiteLLM.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from benchmarks.harness.loadgen import BENCH_KEY
from benchmarks.harness.targets import (
    BENCH_DIR,
    LITELLM_CONF,
    LLMSVC,
    Unavailable,
    apt_install,
    litellm_install,
    nginx_command,
    nginx_install,
    production_stack_command,
    production_stack_install,
)

# (port, backend ports, workdir) -> command line
Command = Callable[[int, Sequence[int], Path], list[str]]


@dataclass(frozen=True)
class Proxy:
    name: str
    settings: str  # what the doc's table says about its configuration
    command: Command
    install: Callable[[], None] = lambda: None
    startup_s: float = 20.0
    env: tuple[tuple[str, str], ...] = ()
    view_path: str | None = None  # the proxy's own view of its backends, when it has one


LLMSVC_FLAGS = (
    "--health-interval", "1", "--health-timeout", "0.5", "--first-byte-timeout", "1",
    "--stream-idle-timeout", "1", "--proxy-connect-timeout", "1", "--log-level", "warning",
)  # fmt: skip


def llmsvc_router(
    port: int, backends: Sequence[int], work: Path, flags: Sequence[str]
) -> list[str]:
    """``llmsvc router`` with ``flags`` in front of the backends, as a static services file."""
    records = [
        {"name": f"b{i}", "host": "127.0.0.1", "port": p, "metadata": {"models": ["bench-model"]}}
        for i, p in enumerate(backends)
    ]
    static = work / "services.json"
    static.write_bytes(orjson.dumps({"services": records}))
    return [*LLMSVC, "router", "--port", str(port), "--static-services", str(static), *flags]


def llmsvc_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    return llmsvc_router(port, backends, work, LLMSVC_FLAGS)


# nginx: the benchmark's configuration, plus limits and retries for POST requests
# (non_idempotent: without it nginx never retries a POST once it was sent).
NGINX_LOCATION = """proxy_buffering off;
            proxy_connect_timeout 1s;
            proxy_read_timeout 1s;
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries 3;"""


def nginx_chaos_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    command = nginx_command(port, backends, work)
    conf = work / "nginx.conf"
    text = conf.read_text().replace("proxy_buffering off;", NGINX_LOCATION)
    conf.write_text(text)
    return command


HAPROXY_CONF = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 1s
    timeout check 500ms
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
    option httpchk GET /health
    http-reuse safe
{servers}
"""


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )


def haproxy_install() -> None:
    if not haproxy_binary():
        apt_install("haproxy")
    if not haproxy_binary():
        raise Unavailable("HAProxy is not installed (apt-get install -y haproxy)")


def haproxy_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    servers = "\n".join(
        f"    server b{i} 127.0.0.1:{p} check inter 1s" for i, p in enumerate(backends)
    )
    conf = work / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(port=port, servers=servers))
    return [haproxy_binary() or "haproxy", "-db", "-f", str(conf)]


LITELLM_EXTRA = """\
  num_retries: 2
  timeout: 1
  stream_timeout: 1
  allowed_fails: 1
  cooldown_time: 5
"""


def litellm_chaos_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    models = "\n".join(
        f"  - model_name: bench-model\n    litellm_params:\n      model: openai/bench-model\n"
        f"      api_base: http://127.0.0.1:{p}/v1\n      api_key: unused\n"
        f"      timeout: 1\n      stream_timeout: 1"
        for p in backends
    )
    text = LITELLM_CONF.format(models=models, key=BENCH_KEY)
    strategy = "  routing_strategy: simple-shuffle\n"
    text = text.replace(strategy, strategy + LITELLM_EXTRA)
    conf = work / "litellm.yaml"
    conf.write_text(text)
    binary = BENCH_DIR / "litellm" / "bin" / "litellm"
    return [str(binary), "--config", str(conf), "--host", "127.0.0.1", "--port", str(port)]


PROXIES: dict[str, Proxy] = {
    p.name: p
    for p in (
        Proxy(
            "llmsvc",
            "`llmsvc router` " + " ".join(LLMSVC_FLAGS[:-2]) + " (max-fails 3, fail-timeout 30 s)",
            llmsvc_command,
            view_path="/services",
        ),
        Proxy(
            "nginx",
            "nginx, 1 worker, `max_fails=1 fail_timeout=10s` (defaults), connect/read timeout "
            "1 s, `proxy_next_upstream error timeout http_50x non_idempotent`, 3 tries",
            nginx_chaos_command,
            nginx_install,
        ),
        Proxy(
            "haproxy",
            "HAProxy, `check inter 1s` (fall 3, rise 2), `timeout connect/server 1s`, "
            "`timeout check 500ms`, `retries 2`, `option redispatch`, `retry-on conn-failure "
            "empty-response response-timeout 50x`",
            haproxy_command,
            haproxy_install,
        ),
        Proxy(
            "litellm",
            "LiteLLM proxy, simple-shuffle, `num_retries 2`, `timeout 1`, `stream_timeout 1`, "
            "`allowed_fails 1`, `cooldown_time 5`",
            litellm_chaos_command,
            litellm_install,
            startup_s=120.0,
            env=(("LITELLM_LOCAL_MODEL_COST_MAP", "True"), ("LITELLM_TELEMETRY", "False")),
        ),
        Proxy(
            "production-stack",
            "vLLM production-stack's router (from its git repository)",
            production_stack_command,
            production_stack_install,
        ),
    )
}
