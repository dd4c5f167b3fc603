"""``llmsvc router``: parse settings, build the app, serve it."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from llmsvc.core.gctune import tune_for_serving
from llmsvc.core.logging import configure_logging
from llmsvc.core.serving import serve, ssl_context
from llmsvc.core.settings import die, parse_settings
from llmsvc.router.accesslog import configure_access_log
from llmsvc.router.app import create_app
from llmsvc.router.config import ConfigError
from llmsvc.router.settings import RouterSettings
from llmsvc.router.workers import MULTIPROC_ENV, port_bindable, run_workers, worker_index

PROG = "llmsvc router"

log = logging.getLogger("llmsvc.router")


def main(argv: Sequence[str]) -> int:
    settings = parse_settings(
        RouterSettings,
        argv,
        prog=PROG,
        description="The OpenAI-compatible front door: routes each request by its model "
        "to a healthy backend.",
    )
    configure_logging(settings.log_level, settings.log_format)
    configure_access_log(settings.access_log)  # JSON lines on stderr, whatever the format
    index = worker_index()  # None unless started by a --workers parent
    metrics_dir = os.environ.get(MULTIPROC_ENV) if index is not None else None
    try:
        app = create_app(settings, metrics_dir=metrics_dir)
    except ConfigError as exc:
        die(PROG, str(exc))
    try:
        tls = ssl_context(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        die(PROG, f"--tls-cert/--tls-key: cannot load: {exc}")
    if (settings.reuse_port or settings.workers > 1) and index is None:
        warn_unless_requests_migrate()
    if settings.workers > 1 and index is None:
        problem = port_bindable(settings.host, settings.port)
        if problem:
            log.error("router %s", problem)
            return 1
        return run_workers(
            argv, workers=settings.workers, shutdown_timeout=settings.shutdown_timeout
        )
    name = "router" if index is None else f"router worker {index}"
    tune_for_serving()  # after the app is built: what exists now lives as long as we do
    return serve(
        app,
        name=name,
        host=settings.host,
        port=settings.port,
        ssl_context=tls,
        reuse_port=settings.reuse_port or index is not None,
        shutdown_timeout=settings.shutdown_timeout,
    )


MIGRATE_SYSCTL = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def warn_unless_requests_migrate() -> None:
    """Say so when a process leaving a shared port would reset connections still queued
    on its listener (Linux hands them to the other listeners only with tcp_migrate_req)."""
    try:
        value = MIGRATE_SYSCTL.read_text().strip()
    except OSError:
        return  # not Linux, or a kernel older than 5.14: nothing to tell
    if value == "0":
        log.warning(
            "net.ipv4.tcp_migrate_req is 0: when a router process sharing this port stops, "
            "connections still queued on its listener are reset; set it to 1 for rolling "
            "restarts that lose nothing (docs/reliability.md)"
        )
