"""``llmsvc router``: parse settings, build the app, serve it."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from llmsvc.core.app import serve, ssl_context
from llmsvc.core.logging import configure_logging
from llmsvc.core.settings import die, parse_settings
from llmsvc.router.app import create_app
from llmsvc.router.config import ConfigError
from llmsvc.router.settings import RouterSettings

PROG = "llmsvc router"


def main(argv: Sequence[str]) -> int:
    settings = parse_settings(
        RouterSettings,
        argv,
        prog=PROG,
        description="The OpenAI-compatible front door: routes each request by its model "
        "to a healthy backend.",
    )
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        die(PROG, str(exc))
    try:
        tls = ssl_context(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        die(PROG, f"--tls-cert/--tls-key: cannot load: {exc}")
    return serve(app, name="router", host=settings.host, port=settings.port, ssl=tls)
