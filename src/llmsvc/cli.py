"""The ``llmsvc`` command: one console script, one subcommand per component.

Subcommands are imported only when they run, so ``llmsvc --help`` is instant
and no service pulls in another.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from llmsvc import __version__

# subcommand -> ("module:function" taking argv and returning an exit status, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "registry": ("llmsvc.registry.cli:main", "run the service registry (port 8081)"),
    "router": ("llmsvc.router.cli:main", "run the OpenAI-compatible router (port 8080)"),
    "babysitter": ("llmsvc.babysitter.cli:main", "launch, supervise and register one engine"),
    "sim-engine": ("llmsvc.simengine.cli:main", "run the simulated OpenAI-compatible engine"),
    "up": ("llmsvc.local.cli:up", "start a local stack (registry, router, babysitters)"),
    "down": ("llmsvc.local.cli:down", "stop the local stack"),
    "status": ("llmsvc.local.cli:status", "show the local stack's processes and health"),
    "validate": ("llmsvc.local.cli:validate", "check a running stack end to end"),
    "systemd": ("llmsvc.local.systemd:main", "print a systemd unit for a component"),
    "exclusive": (
        "llmsvc.local.exclusive:main",
        "stop a babysitter's engine, run a command on its GPU, restore the engine",
    ),
    "tokens": ("llmsvc.local.tokens:main", "make and keep a stack's tokens (0600 files)"),
    "maintenance": (
        "llmsvc.local.maintenance:main",
        "put a model in maintenance, end it, list the entries (registry)",
    ),
    "batch": (
        "llmsvc.batch.cli:main",
        "run the batch service: OpenAI Files and Batches API with SLAs (port 8082)",
    ),
    "nginx-config": (
        "llmsvc.local.nginxconf:main",
        "write an nginx config (upstream per model) from the registry's healthy engines",
    ),
    "bench": ("llmsvc.bench.cli:main", "drive an OpenAI-compatible endpoint and report latency"),
    "operator": ("llmsvc.operator.cli:main", "run the Kubernetes operator (InferenceService CRD)"),
    "simulate": (
        "llmsvc.simulate.cli:main",
        "simulate a fleet and its scaling policies over a traffic trace (simulated time)",
    ),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: llmsvc <command> [options]   (llmsvc {__version__})",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'llmsvc <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"llmsvc {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"llmsvc: error: unknown command '{command}' (see 'llmsvc --help')", file=sys.stderr)
        return 2
    module_name, function = COMMANDS[command][0].split(":")
    run: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), function)
    try:
        return run(rest)
    except KeyboardInterrupt:
        return 130
