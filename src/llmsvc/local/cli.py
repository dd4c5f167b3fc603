"""``llmsvc up | down | status | validate``: flags, the stack file, and the tokens they read."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console

from llmsvc.local import stack
from llmsvc.local.config import ConfigError, StackConfig, demo_config, load
from llmsvc.local.env import env
from llmsvc.local.stack import write_token_from_dir
from llmsvc.local.tokens import TokensError, read_tokens
from llmsvc.local.validate import Validator

DESCRIPTIONS = {
    "up": "Start registry → router → babysitters, each after the one before is ready. "
    "With no file: a demo of two simulated engines serving 'sim-model'. "
    "'llmsvc up babysitter qwen-0' starts only that one (by name or port).",
    "down": "Stop router and babysitters, the registry last (SIGTERM, then SIGKILL). "
    "'llmsvc down router', 'llmsvc down babysitter 8000' stop only those.",
    "status": "Show each component's process and health; exit 1 unless all are healthy.",
    "validate": "Check a running stack end to end: health, registration, models, chat, "
    "streaming, load spread, error shapes.",
}


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"llmsvc {command}", description=DESCRIPTIONS[command])
    parser.add_argument(
        "-f",
        "--file",
        type=Path,
        default=env("FILE"),
        help="stack file (YAML, see docs/local-stack.md) [env LLMSVC_FILE]",
    )
    parser.add_argument(
        "--logs-dir",
        default=env("LOGS_DIR"),
        help="PID files, logs and tokens/ (default: the file's logs_dir, 'logs') "
        "[env LLMSVC_LOGS_DIR]",
    )
    if command in ("up", "down"):
        parser.add_argument(
            "component",
            nargs="?",
            metavar="{" + ",".join(stack.KINDS) + "}",
            help="only this component (default: all of them)",
        )
        parser.add_argument(
            "which",
            nargs="?",
            metavar="NAME|PORT",
            help="a babysitter's name in the file or its port (default: every babysitter)",
        )
    if command == "down":
        parser.add_argument(
            "--timeout",
            type=float,
            default=env("STOP_TIMEOUT"),
            help="seconds between SIGTERM and SIGKILL (default: the file's stop_timeout, 20) "
            "[env LLMSVC_STOP_TIMEOUT]",
        )
    if command == "validate":
        parser.add_argument(
            "--router-url",
            default=env("ROUTER_URL"),
            help="router to check (default: from the file, or :8080) [env LLMSVC_ROUTER_URL]",
        )
        parser.add_argument(
            "--registry-url",
            default=env("REGISTRY_URL"),
            help="registry to check (default: from the file, or :8081) [env LLMSVC_REGISTRY_URL]",
        )
        parser.add_argument(
            "--strategy",
            default=env("STRATEGY"),
            help="the router's strategy: round_robin checks the exact order of the seeds' "
            "pattern, any other only its spread (default: the file's router.strategy, or its "
            "--strategy in router.args) [env LLMSVC_STRATEGY]",
        )
        parser.add_argument(
            "--api-key", default=env("API_KEY"), help="router API key [env LLMSVC_API_KEY]"
        )
        parser.add_argument(
            "--registry-token",
            default=env("REGISTRY_TOKEN"),
            help="registry write token (default: the file's, else <logs dir>/tokens/"
            "registry-token) [env LLMSVC_REGISTRY_TOKEN]",
        )
        parser.add_argument(
            "--router-admin-token",
            default=env("ROUTER_ADMIN_TOKEN"),
            help="router admin token (default: <logs dir>/tokens/router-admin-token) "
            "[env LLMSVC_ROUTER_ADMIN_TOKEN]",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=env("TIMEOUT", "60"),
            help="per request, seconds (default 60) [env LLMSVC_TIMEOUT]",
        )
        parser.add_argument(
            "--route-timeout",
            type=float,
            default=env("ROUTE_TIMEOUT", "30"),
            help="seconds the router may take to route to a newly registered engine, and to "
            "stop after it is deregistered (default 30) [env LLMSVC_ROUTE_TIMEOUT]",
        )
    return parser


def _config(args: argparse.Namespace) -> StackConfig:
    config = load(args.file) if args.file else demo_config()
    if getattr(args, "logs_dir", None):
        config.logs_dir = args.logs_dir
    return config


def up(argv: Sequence[str]) -> int:
    return _main("up", argv)


def down(argv: Sequence[str]) -> int:
    return _main("down", argv)


def status(argv: Sequence[str]) -> int:
    return _main("status", argv)


def validate(argv: Sequence[str]) -> int:
    return _main("validate", argv)


def _main(command: str, argv: Sequence[str]) -> int:
    args = _parser(command).parse_args(list(argv))
    console = Console(highlight=False, soft_wrap=True)
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"llmsvc {command}: error: {exc}", file=sys.stderr)
        return 2
    only: list[str] | None = None
    if getattr(args, "component", None) is not None:
        try:
            only = stack.select(config, args.component, args.which)
        except stack.SelectError as exc:
            print(f"llmsvc {command}: error: {exc}", file=sys.stderr)
            return 2
    if command == "up":
        code = stack.up(config, console, only=only)
        if code == 0 and only is None:
            _print_try(config, console)
        return code
    if command == "down":
        timeout = args.timeout if args.timeout is not None else config.stop_timeout
        titles = {  # a babysitter by the name status shows; the others are what one types
            comp.label: comp.title
            for comp in stack.components(config)
            if comp.label.startswith("babysitter_")
        }
        return stack.down(
            Path(config.logs_dir), timeout=timeout, console=console, only=only, titles=titles
        )
    if command == "status":
        return stack.status(config, console)
    try:
        tokens = read_tokens(config.tokens_dir)
    except TokensError as exc:
        print(f"llmsvc {command}: error: {exc}", file=sys.stderr)
        return 2
    validator = Validator(
        router_url=(args.router_url or config.router_url).rstrip("/"),
        registry_url=(args.registry_url or (config.registry_url if config.uses_registry else None)),
        api_key=args.api_key or (config.router.api_keys[0] if config.router.api_keys else None),
        registry_token=args.registry_token or config.registry.token or _secret(tokens.registry),
        router_admin_token=args.router_admin_token or _secret(tokens.router_admin),
        timeout=args.timeout,
        route_timeout=args.route_timeout,
        batch=config.runs_batch,
        strategy=args.strategy or _router_strategy(config),
        console=console,
    )
    return validator.run()


def _router_strategy(config: StackConfig) -> str | None:
    """The strategy the file starts its router with (a --strategy in router.args wins);
    None for a router that runs elsewhere."""
    if not config.router.enabled:
        return None
    strategy = config.router.strategy
    extra = config.router.args
    for i, arg in enumerate(extra):
        if arg == "--strategy" and i + 1 < len(extra):
            strategy = extra[i + 1]
        elif arg.startswith("--strategy="):
            strategy = arg.split("=", 1)[1]
    return strategy


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _print_try(config: StackConfig, console: Console) -> None:
    if not config.router.enabled:
        return
    url = config.router_url
    model = next((s.model_name or s.model for s in config.babysitters if s.model), "MODEL")
    console.print(
        "\nTry it:\n"
        f"  curl {url}/v1/models\n"
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{model}", "messages": '
        '[{"role": "user", "content": "Hello"}]}\'\n'
        + (f"  curl {url}/v1/batches   (batch jobs: docs/batch.md)\n" if config.runs_batch else "")
        + "  llmsvc status · llmsvc validate · llmsvc down",
        markup=False,
    )
    if config.registry.enabled and write_token_from_dir(config):
        show = f"llmsvc tokens --dir {shlex.quote(str(config.tokens_dir))} --show registry"
        console.print(
            f'  curl -H "Authorization: Bearer $({show})" {config.registry_url}/services\n'
            f"Tokens (0600 files, never printed): {config.tokens_dir}/",
            markup=False,
        )
