"""``llmsvc systemd``: print a systemd unit that runs one llmsvc component.

    llmsvc systemd registry|router|batch|babysitter [unit options] [component flags]
                   [-- engine args]

The unit options (``--memory-max 8G --cpu-quota 200%`` …) are this command's own;
every other flag is the component's and goes, in order, onto ``ExecStart``, as does
everything after ``--`` (a babysitter's engine arguments). The unit restarts the
component on failure, stops it with SIGTERM to the main process only (a babysitter
then drains and stops its engine itself; ``KillMode=mixed`` SIGKILLs what is left
after ``TimeoutStopSec``) and caps memory and CPU for the component and everything
it starts. ``unit_file`` is a pure function; ``docs/bare-metal.md`` shows its use.

Tokens come in as systemd credentials: ``LoadCredential=registry-token:<tokens
dir>/registry-token`` and ``--token-file %d/registry-token`` (``%d`` is the unit's
private credentials directory), so the tokens directory (``llmsvc tokens --dir
/etc/llmsvc/tokens``) stays readable by root alone, whatever ``User=`` the
component runs as. A token the component flags already give (``--token``,
``--allow-anonymous-writes`` …) is not loaded; ``--no-tokens`` loads none.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from llmsvc import __version__
from llmsvc.core.settings import die
from llmsvc.local.env import env, env_flag

PROG = "llmsvc systemd"
COMPONENTS = ("registry", "router", "batch", "babysitter")
# A babysitter drains (--drain-timeout 60) then stops its engine (--stop-timeout 30).
DEFAULT_STOP_TIMEOUT = {"registry": 30, "router": 30, "batch": 30, "babysitter": 120}

_SIZE = re.compile(r"^(\d+(\.\d+)?[KMGT]?|\d+(\.\d+)?%|infinity)$")
_PERCENT = re.compile(r"^\d+(\.\d+)?%$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

DEFAULT_TOKENS_DIR = "/etc/llmsvc/tokens"


@dataclass(frozen=True)
class Credential:
    """A token file a component reads: its flag, its file, the flags that also give it."""

    flag: str
    file: str
    given_by: tuple[str, ...]
    when: str | None = None
    """Loaded only when the component's flags include this one (a router's batch token
    only with ``--batch-url``: an older tokens directory has no such file, and a missing
    ``LoadCredential=`` file stops the unit from starting)."""


_WRITE_TOKEN = Credential(
    "--registry-token-file", "registry-token", ("--registry-token", "--registry-token-file")
)
CREDENTIALS: dict[str, tuple[Credential, ...]] = {
    "registry": (
        Credential(
            "--token-file",
            "registry-token",
            ("--token", "--token-file", "--allow-anonymous-writes"),
        ),
        Credential(
            "--admin-token-file", "registry-admin-token", ("--admin-token", "--admin-token-file")
        ),
    ),
    "router": (
        _WRITE_TOKEN,
        Credential(
            "--admin-token-file", "router-admin-token", ("--admin-token", "--admin-token-file")
        ),
        Credential(
            "--batch-token-file",
            "batch-token",
            ("--batch-token", "--batch-token-file"),
            when="--batch-url",
        ),
    ),
    "batch": (Credential("--token-file", "batch-token", ("--token", "--token-file")),),
    "babysitter": (_WRITE_TOKEN,),
}
"""The tokens each component is given by default (files of ``llmsvc tokens``)."""


@dataclass(frozen=True)
class UnitOptions:
    """The unit's own settings (flags of ``llmsvc systemd``)."""

    memory_max: str | None = None
    memory_high: str | None = None
    cpu_quota: str | None = None
    restart_sec: float = 5.0
    timeout_stop_sec: float | None = None
    user: str | None = None
    group: str | None = None
    working_directory: str | None = None
    environment_file: str | None = None
    description: str | None = None
    tokens_dir: str | None = None
    """Where LoadCredential= reads the tokens; None: none (the command's default is
    :data:`DEFAULT_TOKENS_DIR`)."""


def credentials(component: str, args: Sequence[str], tokens_dir: str | None) -> list[Credential]:
    """The component's token files that its own flags (before ``--``) do not already give."""
    if tokens_dir is None:
        return []
    own = list(args[: list(args).index("--")] if "--" in args else args)
    given = {a.split("=", 1)[0] for a in own if a.startswith("--")}
    return [
        c
        for c in CREDENTIALS[component]
        if not given.intersection(c.given_by) and (c.when is None or c.when in given)
    ]


def unit_file(
    component: str, args: Sequence[str], options: UnitOptions, command: Sequence[str]
) -> str:
    """The text of a unit running ``command component args``."""
    stop = options.timeout_stop_sec or DEFAULT_STOP_TIMEOUT[component]
    creds = credentials(component, args, options.tokens_dir)
    exec_start = " ".join(
        [quote(a) for a in [*command, component]]
        + [f"{c.flag} %d/{c.file}" for c in creds]  # %d: the credentials directory
        + [quote(a) for a in args]
    )
    loads = [
        f"LoadCredential={c.file}:{str(options.tokens_dir).replace('%', '%%')}/{c.file}"
        for c in creds
    ]
    service = [
        "Type=exec",
        *loads,
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        f"RestartSec={_number(options.restart_sec)}",
        "KillMode=mixed",
        f"TimeoutStopSec={_number(stop)}",
        "Environment=PYTHONUNBUFFERED=1",
        f"SyslogIdentifier=llmsvc-{component}",
        "LimitNOFILE=65536",
    ]
    optional = [
        ("MemoryHigh", options.memory_high),
        ("MemoryMax", options.memory_max),
        ("CPUQuota", options.cpu_quota),
        ("User", options.user),
        ("Group", options.group),
        ("WorkingDirectory", options.working_directory),
        ("EnvironmentFile", options.environment_file),
    ]
    service += [f"{key}={value}" for key, value in optional if value]
    description = options.description or f"llmsvc {component}"
    lines = [
        f"# Generated by llmsvc {__version__}: {PROG} {component} "
        + " ".join(shlex.quote(a) for a in args),
        f"# Install as /etc/systemd/system/llmsvc-{component}.service, then:",
        f"#   systemctl daemon-reload && systemctl enable --now llmsvc-{component}",
        "[Unit]",
        f"Description={description}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def quote(arg: str) -> str:
    """One ``ExecStart`` word: specifiers and variables escaped, quoted when needed."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r"[\s\"'\\;]", arg):
        return arg
    escaped = (
        arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def default_command() -> list[str]:
    """The ``llmsvc`` beside this interpreter, else this interpreter with ``-m llmsvc``."""
    script = Path(sys.executable).parent / "llmsvc"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "llmsvc"]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} {{{','.join(COMPONENTS)}}}",
        description="Print a systemd unit for an llmsvc component. Flags not listed here are "
        "the component's and go onto ExecStart in order, as does everything after '--'.",
        allow_abbrev=False,
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    add = parser.add_argument
    add(
        "--memory-max",
        default=env("MEMORY_MAX"),
        help="MemoryMax=: hard memory cap, e.g. 8G "
        "(component and children) [env LLMSVC_MEMORY_MAX]",
    )
    add(
        "--memory-high",
        default=env("MEMORY_HIGH"),
        help="MemoryHigh=: memory level above "
        "which it is throttled, e.g. 6G [env LLMSVC_MEMORY_HIGH]",
    )
    add(
        "--cpu-quota",
        default=env("CPU_QUOTA"),
        help="CPUQuota=: CPU time cap, e.g. 200%% (two cores) [env LLMSVC_CPU_QUOTA]",
    )
    add(
        "--restart-sec",
        type=float,
        default=env("RESTART_SEC", "5"),
        help="RestartSec=: seconds before a restart (default 5) [env LLMSVC_RESTART_SEC]",
    )
    add(
        "--timeout-stop-sec",
        type=float,
        default=env("TIMEOUT_STOP_SEC"),
        help="TimeoutStopSec= "
        "(default 120 for a babysitter: drain, then engine stop; else 30) "
        "[env LLMSVC_TIMEOUT_STOP_SEC]",
    )
    add("--user", default=env("UNIT_USER"), help="User= to run as [env LLMSVC_UNIT_USER]")
    add("--group", default=env("UNIT_GROUP"), help="Group= to run as [env LLMSVC_UNIT_GROUP]")
    add(
        "--working-directory",
        default=env("WORKING_DIRECTORY"),
        help="WorkingDirectory= (absolute) [env LLMSVC_WORKING_DIRECTORY]",
    )
    add(
        "--environment-file",
        default=env("ENVIRONMENT_FILE"),
        help="EnvironmentFile= with LLMSVC_* settings (e.g. tokens) [env LLMSVC_ENVIRONMENT_FILE]",
    )
    add(
        "--description",
        default=env("UNIT_DESCRIPTION"),
        help="Description= of the unit [env LLMSVC_UNIT_DESCRIPTION]",
    )
    add(
        "--tokens-dir",
        default=env("TOKENS_DIR", DEFAULT_TOKENS_DIR),
        help="LoadCredential= the component's tokens "
        "from this directory (made by `llmsvc tokens --dir DIR`) [default: %(default)s] "
        "[env LLMSVC_TOKENS_DIR]",
    )
    add(
        "--no-tokens",
        action="store_true",
        default=env_flag(PROG, "NO_TOKENS"),
        help="load no token (they come from the component "
        "flags or the --environment-file, or the registry takes anonymous writes) "
        "[env LLMSVC_NO_TOKENS]",
    )
    add(
        "--exec",
        dest="command",
        default=env("UNIT_EXEC"),
        help="the llmsvc command (default: the one beside Python) [env LLMSVC_UNIT_EXEC]",
    )
    return parser


def parse(argv: Sequence[str]) -> tuple[str, list[str], UnitOptions, list[str]] | None:
    """(component, its args, unit options, command); None after printing help."""
    args = list(argv)
    parser = _parser()
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return None
    component, rest = args[0], args[1:]
    if component not in COMPONENTS:
        _die(f"unknown component '{component}' (one of: {', '.join(COMPONENTS)})")
    ours, tail = (
        (rest[: rest.index("--")], rest[rest.index("--") :]) if "--" in rest else (rest, [])
    )
    if any("\n" in a or "\r" in a for a in rest):
        _die("arguments cannot contain line breaks")
    known, passthrough = parser.parse_known_args(ours)
    if known.help:
        parser.print_help()
        return None
    options = _options(known)
    command = shlex.split(known.command) if known.command else default_command()
    return component, [*passthrough, *tail], options, command


def _options(known: argparse.Namespace) -> UnitOptions:
    for flag, value, pattern in (
        ("--memory-max", known.memory_max, _SIZE),
        ("--memory-high", known.memory_high, _SIZE),
        ("--cpu-quota", known.cpu_quota, _PERCENT),
    ):
        if value is not None and not pattern.match(value):
            _die(f"{flag}: '{value}' is not a systemd value (e.g. 8G, 512M, 50%, 200%)")
    for flag, value in (("--user", known.user), ("--group", known.group)):
        if value is not None and not _NAME.match(value):
            _die(f"{flag}: '{value}' is not a user or group name")
    for flag, value in (
        ("--working-directory", known.working_directory),
        ("--environment-file", known.environment_file),
        ("--tokens-dir", known.tokens_dir),
    ):
        if value is not None and not value.startswith("/"):
            _die(f"{flag}: must be an absolute path (got '{value}')")
    if re.search(r"[\s:]", known.tokens_dir):
        _die(f"--tokens-dir: '{known.tokens_dir}' cannot hold spaces or ':' (LoadCredential=)")
    if known.restart_sec < 0 or (
        known.timeout_stop_sec is not None and known.timeout_stop_sec <= 0
    ):
        _die("--restart-sec and --timeout-stop-sec must be positive")
    return UnitOptions(
        memory_max=known.memory_max,
        memory_high=known.memory_high,
        cpu_quota=known.cpu_quota,
        restart_sec=known.restart_sec,
        timeout_stop_sec=known.timeout_stop_sec,
        user=known.user,
        group=known.group,
        working_directory=known.working_directory,
        environment_file=known.environment_file,
        description=known.description,
        tokens_dir=None if known.no_tokens else known.tokens_dir.rstrip("/") or "/",
    )


def _die(message: str) -> NoReturn:
    die(PROG, message)


def main(argv: Sequence[str]) -> int:
    parsed = parse(argv)
    if parsed is None:
        return 0
    component, args, options, command = parsed
    sys.stdout.write(unit_file(component, args, options, command))
    return 0
