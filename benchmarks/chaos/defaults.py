"""The proxies of the hung-engine case, each with its DEFAULT timeouts, retries and health checks.

The faults table (``proxies.py``) tunes every proxy alike; this one asks what
an operator gets who configures nothing about failure. Each proxy is given
only what it needs to reach the two backends, and whatever its documentation
shows for what it cannot do without:

* llmsvc: ``llmsvc router --static-services FILE``, no tuning flag at all.
* nginx: the proxy benchmark's configuration (``benchmarks/harness/targets.py``:
  one worker, ``upstream`` with ``keepalive 64``, HTTP/1.1 upstream,
  ``proxy_buffering off`` so that streams flow) and nothing else, so its
  documented defaults hold: ``max_fails=1 fail_timeout=10s``,
  ``proxy_connect_timeout 60s``, ``proxy_read_timeout 60s``,
  ``proxy_next_upstream error timeout`` (without ``non_idempotent``: a POST
  that was sent is never retried), ``proxy_next_upstream_tries 0``
  (unlimited). Open-source nginx has no active health checks.
* HAProxy: a health check needs ``check`` on each server and ``option
  httpchk`` (``GET /health``; the default ``inter 2s fall 3 rise 2`` hold),
  and HAProxy warns at start without ``timeout connect/client/server``, so
  they are the values of its configuration manual's example (section 2.6,
  also what Debian's packaged ``haproxy.cfg`` ships): 5 s, 50 s, 50 s.
  ``retries 3`` (its default) and ``option redispatch`` (so that a retry
  may go to the other server). ``retry-on`` stays at its default,
  ``conn-failure``: a request that was sent is not retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.chaos.proxies import Proxy, haproxy_binary, haproxy_install, llmsvc_router
from benchmarks.harness.targets import nginx_command, nginx_install

LLMSVC_SETTINGS = "`llmsvc router --static-services FILE` and no other flag"
NGINX_SETTINGS = (
    "1 worker, `upstream` with `keepalive 64`, `proxy_http_version 1.1`, `proxy_buffering off`, "
    "nothing else: the defaults `max_fails=1 fail_timeout=10s`, `proxy_connect_timeout 60s`, "
    "`proxy_read_timeout 60s`, `proxy_next_upstream error timeout` (no `non_idempotent`: a POST "
    "once sent is not retried), `proxy_next_upstream_tries 0` (unlimited); no active checks"
)
HAPROXY_SETTINGS = (
    "`option httpchk GET /health` and `check` on each server (defaults `inter 2s fall 3 rise 2`, "
    "check timeout = `inter`), `timeout connect 5000ms`, `timeout client 50000ms`, "
    "`timeout server 50000ms` (its configuration manual's example, section 2.6), `retries 3`, "
    "`option redispatch`, default `retry-on conn-failure`"
)


def llmsvc_defaults_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    return llmsvc_router(port, backends, work, ("--log-level", "warning"))  # no tuning flags


HAPROXY_DEFAULTS_CONF = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 5000ms
    timeout client 50000ms
    timeout server 50000ms
    retries 3
    option redispatch
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
    option httpchk GET /health
{servers}
"""


def haproxy_defaults_command(port: int, backends: Sequence[int], work: Path) -> list[str]:
    servers = "\n".join(f"    server b{i} 127.0.0.1:{p} check" for i, p in enumerate(backends))
    conf = work / "haproxy.cfg"
    conf.write_text(HAPROXY_DEFAULTS_CONF.format(port=port, servers=servers))
    return [haproxy_binary() or "haproxy", "-db", "-f", str(conf)]


PROXIES_AT_DEFAULTS: dict[str, Proxy] = {
    p.name: p
    for p in (
        Proxy("llmsvc", LLMSVC_SETTINGS, llmsvc_defaults_command, view_path="/services"),
        Proxy("nginx", NGINX_SETTINGS, nginx_command, nginx_install),
        Proxy("haproxy", HAPROXY_SETTINGS, haproxy_defaults_command, haproxy_install),
    )
}
