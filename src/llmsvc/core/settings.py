"""Typed settings from command-line flags and ``LLMSVC_*`` environment variables.

Every service declares one pydantic-settings class. Each field is a flag
(``health_interval`` → ``--health-interval``) and an environment variable
(``LLMSVC_HEALTH_INTERVAL``); a flag wins over the environment, which wins over
the default. The field's ``description`` is the flag's help text.

Bad values end the program with one line on stderr and exit status 2, never a
traceback (:class:`SettingsError`).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llmsvc.core.jsonio import DEFAULT_READ_TIMEOUT

ENV_PREFIX = "LLMSVC_"

S = TypeVar("S", bound="BaseServiceSettings")


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
"""A list given as ``a,b,c`` on the command line and in the environment."""


class SettingsError(Exception):
    """Invalid settings: the message is one line, fit for a terminal."""


class BaseServiceSettings(BaseSettings):
    """Settings every service has."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    log_level: typing.Literal["debug", "info", "warning", "error"] = "info"
    log_format: typing.Literal["text", "json"] = "text"


class ServerSettings(BaseServiceSettings):
    """Settings every HTTP service has (router, registry, babysitter, simulated engine)."""

    read_timeout: float = Field(
        default=DEFAULT_READ_TIMEOUT,
        gt=0,
        description="Seconds a client may take to send a request's headers (then the "
        "connection is closed; idle keep-alive connections too) and then its body "
        "(then 408): slow clients cannot hold a server's tasks.",
    )
    shutdown_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds to let open requests finish on SIGTERM/SIGINT (after the "
        "listener has closed and open connections have drained for up to 1 s); then they "
        "are cut.",
    )


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(a is bool for a in get_args(annotation)) and all(
            a in (bool, type(None)) for a in get_args(annotation)
        )
    return False


def _help(name: str, info: FieldInfo) -> str:
    text = info.description or ""
    if not info.is_required():
        default = info.get_default(call_default_factory=True)
        if default not in (None, "", [], {}):
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            text += f" (default: {shown})"
    return f"{text} [env {env_name(name)}]".strip()


def build_parser(
    settings_cls: type[BaseServiceSettings],
    *,
    prog: str,
    description: str | None = None,
    positional: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per settings field (``positional`` ones excepted)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, info in settings_cls.model_fields.items():
        if name in positional:
            parser.add_argument(name, help=_help(name, info), nargs="?")
            continue
        flag = flag_name(name)
        if _is_bool(info.annotation):
            parser.add_argument(
                flag, dest=name, help=_help(name, info), action=argparse.BooleanOptionalAction
            )
        else:
            metavar = name.upper()
            parser.add_argument(flag, dest=name, help=_help(name, info), metavar=metavar)
    return parser


def settings_from_values(settings_cls: type[S], values: dict[str, Any]) -> S:
    """Construct settings (flags given as ``values`` win over env); one-line errors."""
    try:
        return settings_cls(**values)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, from_flags=set(values))) from None
    except ValueError as exc:  # pydantic-settings' own parse errors (bad env JSON, ...)
        raise SettingsError(str(exc).splitlines()[0]) from None


def describe_validation_error(exc: ValidationError, *, from_flags: set[str]) -> str:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    field = loc[0] if loc else ""
    message = str(err["msg"]).removeprefix("Value error, ")
    if not field:  # a rule across several settings
        return message
    where = flag_name(field) if field in from_flags else env_name(field)
    if err["type"] == "extra_forbidden":
        return f"unknown setting {where}"
    if err["type"] == "missing":
        return f"{flag_name(field)} is required"
    given = err.get("input")
    shown = f" (got {given!r})" if isinstance(given, str | int | float) else ""
    return f"{where}: {message}{shown}"


def parse_settings(
    settings_cls: type[S],
    argv: Sequence[str],
    *,
    prog: str,
    description: str | None = None,
) -> S:
    """Parse ``argv`` into ``settings_cls``; print one line and exit 2 on bad input."""
    parser = build_parser(settings_cls, prog=prog, description=description)
    namespace = parser.parse_args(list(argv))
    try:
        return settings_from_values(settings_cls, vars(namespace))
    except SettingsError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` at the first ``--``: (our flags, what goes to a child command)."""
    args = list(argv)
    if "--" in args:
        i = args.index("--")
        return args[:i], args[i + 1 :]
    return args, []


def die(prog: str, message: str, status: int = 2) -> typing.NoReturn:
    """One line on stderr and a non-zero exit: how every command reports bad input."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(status)
