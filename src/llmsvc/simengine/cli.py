"""``llmsvc sim-engine``: parse the flags, build the app, serve it."""

from __future__ import annotations

from collections.abc import Sequence

from llmsvc.core.logging import configure_logging
from llmsvc.core.serving import serve
from llmsvc.core.settings import parse_settings
from llmsvc.simengine.app import create_app
from llmsvc.simengine.settings import SimEngineSettings

PROG = "llmsvc sim-engine"
DESCRIPTION = (
    "A simulated OpenAI-compatible LLM engine whose timing follows a stated model "
    "(queue, prefill, per-token decode, prefix cache) and which exports vLLM's metrics."
)


def main(argv: Sequence[str]) -> int:
    if list(argv[:1]) == ["fit"]:
        from llmsvc.simengine import fit

        return fit.main(argv[1:])
    settings = parse_settings(SimEngineSettings, argv, prog=PROG, description=DESCRIPTION)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    return serve(
        app,
        name="sim-engine",
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
    )
