"""``llmsvc registry``: flags -> settings -> app -> serve."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

from llmsvc.core.logging import configure_logging
from llmsvc.core.serving import serve, ssl_context
from llmsvc.core.settings import die, parse_settings
from llmsvc.registry.app import create_app
from llmsvc.registry.kubernetes import CredentialsError
from llmsvc.registry.persistence import StateFileError
from llmsvc.registry.settings import RegistrySettings

PROG = "llmsvc registry"

log = logging.getLogger("llmsvc.registry")


def main(argv: Sequence[str]) -> int:
    settings = parse_settings(
        RegistrySettings,
        argv,
        prog=PROG,
        description="The service registry: engines and babysitters register and "
        "heartbeat; routers watch it with a blocking query.",
    )
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except (StateFileError, CredentialsError) as exc:
        die(PROG, str(exc), status=1)
    try:
        tls = ssl_context(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        die(PROG, f"--tls-cert/--tls-key: cannot load: {exc}")
    if settings.allow_anonymous_writes:
        log.warning(
            "registry writes need no token (--allow-anonymous-writes): anyone who can "
            "reach port %d can register, replace and remove services",
            settings.port,
        )
    return serve(
        app,
        name="registry",
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        ssl_context=tls,
    )
