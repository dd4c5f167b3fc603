"""``llmsvc babysitter``: launch, supervise and register one inference engine."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from llmsvc.babysitter.app import RUNTIME, create_app
from llmsvc.babysitter.engines import EngineConfigError, build_engine, identity
from llmsvc.babysitter.output import own_log_handler
from llmsvc.babysitter.registration import name_problem
from llmsvc.babysitter.settings import ENGINES, BabysitterSettings
from llmsvc.core.logging import configure_logging
from llmsvc.core.serving import serve
from llmsvc.core.settings import die, parse_settings, split_passthrough

PROG = "llmsvc babysitter"
DESCRIPTION = (
    "Launch one inference engine on --port, keep it alive and register it. "
    "The babysitter's API listens on port + 1. Everything after '--' goes to the "
    "engine's command line; with --engine command it is the whole command, with "
    "{port}, {host}, {model} and {model_name} filled in."
)


def main(argv: Sequence[str]) -> int:
    ours, engine_args = split_passthrough(argv)
    if not _engine_given(ours):
        die(PROG, f"--engine is required: one of {', '.join(ENGINES)}")
    settings = parse_settings(BabysitterSettings, ours, prog=PROG, description=DESCRIPTION)
    try:
        build_engine(settings, engine_args)
    except EngineConfigError as exc:
        die(PROG, str(exc))
    problem = name_problem(identity(settings).name)
    if problem:
        die(PROG, f"--name: {problem}" if settings.name else f"{problem}; set --name")
    configure_logging(settings.log_level, settings.log_format)
    if settings.log_dir:  # the babysitter's own JSON log beside the engine's
        handler = own_log_handler(
            settings.log_dir,
            identity(settings).name,
            max_bytes=settings.log_max_bytes,
            backups=settings.log_backups,
        )
        logging.getLogger().addHandler(handler)
    app = create_app(settings, engine_args=engine_args)
    code = serve(
        app,
        name="babysitter",
        host=settings.host,
        port=settings.port + 1,
        shutdown_timeout=settings.shutdown_timeout,
        stop=app[RUNTIME].give_up.stop,  # the supervisor gave up: stop as on SIGTERM
    )
    return app[RUNTIME].give_up.exit_code(code)


def _engine_given(args: Sequence[str]) -> bool:
    """--engine on the command line or in the environment (or help asked for)."""
    given = ("--engine", "-h", "--help")
    return bool(os.environ.get("LLMSVC_ENGINE")) or any(
        a in given or a.startswith("--engine=") for a in args
    )
