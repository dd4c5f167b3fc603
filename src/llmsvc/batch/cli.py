"""``llmsvc batch``: parse settings, open the store, serve the API and run the batches."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from llmsvc.batch.app import create_app
from llmsvc.batch.settings import BatchSettings
from llmsvc.core.logging import configure_logging
from llmsvc.core.serving import serve
from llmsvc.core.settings import die, parse_settings

PROG = "llmsvc batch"

log = logging.getLogger("llmsvc.batch")


def main(argv: Sequence[str]) -> int:
    settings = parse_settings(
        BatchSettings,
        argv,
        prog=PROG,
        description="OpenAI's Files and Batches API: runs batches of requests through the "
        "router at priority batch, each within its completion window.",
    )
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except (OSError, sqlite3.Error) as exc:
        die(PROG, f"--data-dir {settings.data_dir}: cannot open the store: {exc}")
    if settings.token is None:
        log.warning(
            "no --token: the API is open and X-Llmsvc-Tenant is believed; anyone who can "
            "reach port %d can act as any tenant (set --token, the router's --batch-token)",
            settings.port,
        )
    return serve(
        app,
        name="batch",
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
    )
