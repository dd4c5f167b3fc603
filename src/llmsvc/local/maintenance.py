"""``llmsvc maintenance on | off | list``: the registry's maintenance entries from a shell.

``on`` and ``off`` need the registry's admin token (the write token every
babysitter holds cannot take a model down); ``list`` needs a read token. Each
token comes from its flag, its file flag, its ``LLMSVC_REGISTRY_*`` variable,
or else the file ``llmsvc up`` keeps in its tokens directory
(:func:`llmsvc.local.tokens.default_dir`), when there is one.

Every failure is one line on stderr: exit 2 for a bad flag, an ``--until`` that
is unparsable or past, a registry that is down or refuses the token; exit 1 for
``off`` with nothing to end.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson
from pydantic import SecretStr, ValidationError

from llmsvc.core.addresses import check_origin_url
from llmsvc.core.jsonio import validation_message
from llmsvc.core.maintenance import MaintenanceEntry, MaintenanceList, MaintenanceRequest
from llmsvc.core.registry_client import RegistryClient, RegistryError, RegistryRejected
from llmsvc.core.secrets import from_flag_or_file
from llmsvc.local.env import env, env_flag
from llmsvc.local.tokens import REGISTRY, REGISTRY_ADMIN, TokensError, default_dir, file_name

PROG = "llmsvc maintenance"
DEFAULT_REGISTRY = "http://127.0.0.1:8081"
TIMEOUT_S = 10.0

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


class CommandError(Exception):
    """A one-line reason, printed as ``llmsvc maintenance: error: <reason>`` (exit 2)."""


def parse_until(text: str, now: datetime) -> datetime:
    """``--until``: RFC 3339 with an offset, or a duration from ``now`` (``30m``, ``2h``,
    ``1h30m``, ``1d``, ``90s``); :class:`CommandError` when neither or not in the future."""
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if value and match is not None:
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if delta <= timedelta(0):
            raise CommandError(f"--until {text!r}: a duration must be longer than 0")
        return now + delta
    try:
        until = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise CommandError(
            f"--until {text!r}: give RFC 3339 with an offset (2026-12-02T14:00:00Z) "
            "or a duration from now (30m, 2h, 1h30m)"
        ) from None
    if until.tzinfo is None:
        raise CommandError(f"--until {text!r}: give a UTC offset, e.g. Z (2026-12-02T14:00:00Z)")
    if until <= now:
        raise CommandError(f"--until {text!r} is in the past: give a time in the future")
    return until.astimezone(UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Take a model (or one backend of it) out of service with a message "
        "routers answer (503 'maintenance', Retry-After until its end), bring it back, "
        "or list the entries. The registry keeps them, so every router replica obeys.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry-url",
        "--registry",
        default=env("REGISTRY_URL") or DEFAULT_REGISTRY,
        help=f"the registry (default {DEFAULT_REGISTRY}) [env LLMSVC_REGISTRY_URL]",
    )
    common.add_argument(
        "--admin-token",
        default=env("REGISTRY_ADMIN_TOKEN"),
        help="the registry's admin token, which on and off need [env LLMSVC_REGISTRY_ADMIN_TOKEN]",
    )
    common.add_argument(
        "--admin-token-file",
        type=Path,
        default=env("REGISTRY_ADMIN_TOKEN_FILE"),
        help="file holding --admin-token (default: llmsvc up's tokens/registry-admin-token "
        "when present) [env LLMSVC_REGISTRY_ADMIN_TOKEN_FILE]",
    )
    common.add_argument(
        "--token",
        default=env("REGISTRY_TOKEN"),
        help="the registry's write (read) token, for list [env LLMSVC_REGISTRY_TOKEN]",
    )
    common.add_argument(
        "--token-file",
        type=Path,
        default=env("REGISTRY_TOKEN_FILE"),
        help="file holding --token (default: llmsvc up's tokens/registry-token when "
        "present) [env LLMSVC_REGISTRY_TOKEN_FILE]",
    )
    commands = parser.add_subparsers(dest="action", required=True, metavar="on|off|list")
    on = commands.add_parser("on", parents=[common], help="put a model in maintenance")
    on.add_argument("model", help="the model id")
    message = env("MAINTENANCE_MESSAGE")
    on.add_argument(
        "--message",
        "-m",
        required=message is None,
        default=message,
        help="what clients are told (one line) [env LLMSVC_MAINTENANCE_MESSAGE]",
    )
    on.add_argument(
        "--until",
        default=env("MAINTENANCE_UNTIL"),
        help="when it ends: RFC 3339 with an offset, or a duration from now (30m, 2h, "
        "1h30m); default: until 'off' [env LLMSVC_MAINTENANCE_UNTIL]",
    )
    backend = env("MAINTENANCE_BACKEND")
    on.add_argument(
        "--backend",
        default=backend,
        help="only this backend (its registry record name) [env LLMSVC_MAINTENANCE_BACKEND]",
    )
    off = commands.add_parser("off", parents=[common], help="end a model's maintenance")
    off.add_argument("model", help="the model id")
    off.add_argument(
        "--backend",
        default=backend,
        help="only this backend's entry [env LLMSVC_MAINTENANCE_BACKEND]",
    )
    listing = commands.add_parser("list", parents=[common], help="list the entries in force")
    listing.add_argument("model", nargs="?", help="only this model's entries")
    listing.add_argument(
        "--json",
        action="store_true",
        default=env_flag(PROG, "JSON"),
        help="the registry's JSON answer [env LLMSVC_JSON]",
    )
    return parser


def _token(value: str | None, file: Path | None, *, flag: str, default: str) -> str | None:
    """A token from its flag or file, else from ``llmsvc up``'s tokens directory."""
    try:
        token = from_flag_or_file(SecretStr(value) if value else None, file, flag=flag)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if token is not None:
        return token.get_secret_value()
    path = default_dir() / file_name(default)
    if path.is_file():
        token = from_flag_or_file(None, path, flag=flag)
        return token.get_secret_value() if token is not None else None
    return None


def _cell(value: str | None) -> str:
    return value if value else "-"


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def table(entries: Sequence[MaintenanceEntry]) -> str:
    """The entries as aligned columns: model, backend, message, until, source."""
    header = ("MODEL", "BACKEND", "MESSAGE", "UNTIL", "SOURCE")
    rows = [header] + [
        (e.model, _cell(e.backend), e.message, _cell(_time(e.until)), e.source) for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    )


async def _run(args: argparse.Namespace) -> int:
    try:
        url = check_origin_url(args.registry_url.rstrip("/"))
    except ValueError as exc:
        raise CommandError(f"--registry-url: {exc}") from None
    read = _token(args.token, args.token_file, flag="--token", default=REGISTRY)
    admin = _token(
        args.admin_token, args.admin_token_file, flag="--admin-token", default=REGISTRY_ADMIN
    )
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(
            base_url=url, session=session, token=read or admin, timeout=TIMEOUT_S
        )
        if args.action == "list":
            entries, _ = await client.maintenance()
            if args.model is not None:
                entries = [e for e in entries if e.model == args.model]
            if args.json:
                body = MaintenanceList(maintenance=entries, total=len(entries))
                print(orjson.dumps(body.model_dump(mode="json")).decode())
            elif entries:
                print(table(entries))
            else:
                print("no maintenance entries")
            return 0
        if args.action == "on":
            now = datetime.fromtimestamp(time.time(), UTC)
            until = parse_until(args.until, now) if args.until is not None else None
            try:
                request = MaintenanceRequest(
                    message=args.message, until=until, backend=args.backend
                )
            except ValidationError as exc:
                raise CommandError(validation_message(exc)[0]) from None
            entry = await client.put_maintenance(args.model, request, admin_token=admin)
            target = _target(entry.model, entry.backend)
            ends = f"until {_time(entry.until)}" if entry.until else "until 'off'"
            print(f"maintenance on for {target} {ends}: {entry.message}")
            return 0
        deleted = await client.delete_maintenance(args.model, args.backend, admin_token=admin)
        target = _target(args.model, args.backend)
        if deleted is None:
            print(f"{PROG}: no maintenance entry for {target}", file=sys.stderr)
            return 1
        print(f"maintenance off for {target}")
        return 0


def _target(model: str, backend: str | None) -> str:
    return f"model '{model}'" + (f" backend '{backend}'" if backend else "")


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (CommandError, TokensError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except RegistryRejected as exc:
        detail = str(exc)
        if exc.status == 401:
            detail += " (give --admin-token or --admin-token-file)" if args.action != "list" else ""
        print(f"{PROG}: error: {detail}", file=sys.stderr)
    except RegistryError as exc:
        detail = str(exc)
        if " unreachable: " in detail:  # the connector's repr says nothing more to a person
            detail = detail.split(": ", 1)[0] + " (is it running? see --registry-url)"
        print(f"{PROG}: error: {detail}", file=sys.stderr)
    return 2
