"""The local stack's tokens: one 0600 file per token in a 0700 directory, made once, kept.

``llmsvc up`` keeps them in ``<logs dir>/tokens/``; compose runs ``llmsvc tokens
--dir /run/llmsvc/tokens`` into a volume; bare-metal hosts keep them in
``/etc/llmsvc/tokens``. Each file holds the token and a newline, and every
component reads it with its ``--*-token-file`` flag:

==========================  ==========================================================
``registry-token``          the registry's write token (``--token-file``); routers and
                            babysitters send it (``--registry-token-file``)
``registry-admin-token``    the registry's admin token (``--admin-token-file``)
``router-admin-token``      the router's admin token (``--admin-token-file``)
``batch-token``             shared by the router and the batch service: the router sends
                            it when forwarding ``/v1/files*`` and ``/v1/batches*``
                            (``--batch-token-file``), the batch service requires it
                            (``--token-file``) and sends it with each line
==========================  ==========================================================

A missing token is made with :func:`llmsvc.core.secrets.new_token` in a private
temporary file and *linked* into place: ``link(2)`` fails when the name exists, so
two ``llmsvc up`` started at once agree on one token, and a reader never sees a
half-written file. An existing token is kept (a restart keeps the tokens). A
directory or file that others can read is *fixed* (chmod 0700/0600) with a warning,
since the token may already have been read; a file that is not a token is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from llmsvc.core.secrets import new_token, read_token_file
from llmsvc.core.settings import die

log = logging.getLogger(__name__)

PROG = "llmsvc tokens"
DIR_MODE = 0o700
FILE_MODE = 0o600
DEFAULT_DIR = Path("logs") / "tokens"

REGISTRY = "registry"
REGISTRY_ADMIN = "registry-admin"
ROUTER_ADMIN = "router-admin"
BATCH = "batch"
NAMES = (REGISTRY, REGISTRY_ADMIN, ROUTER_ADMIN, BATCH)
"""The tokens, by the name ``--show`` takes; each one's file is ``<name>-token``."""


def file_name(name: str) -> str:
    """The file that holds token ``name`` (``registry`` → ``registry-token``)."""
    return f"{name}-token"


class TokensError(Exception):
    """A one-line reason why the tokens directory cannot be used."""


@dataclass(frozen=True)
class Tokens:
    """The stack's tokens; None where the directory holds none (never printed: SecretStr)."""

    registry: SecretStr | None = None
    registry_admin: SecretStr | None = None
    router_admin: SecretStr | None = None
    batch: SecretStr | None = None

    def get(self, name: str) -> SecretStr | None:
        """The token called ``name`` (one of :data:`NAMES`)."""
        value: SecretStr | None = getattr(self, name.replace("-", "_"))
        return value


def ensure_tokens(directory: Path, names: Sequence[str] = NAMES) -> Tokens:
    """The tokens in ``directory``, after making the missing ones of ``names``."""
    return _ensure(directory, names)[0]


def _ensure(directory: Path, names: Sequence[str]) -> tuple[Tokens, list[str]]:
    """(the tokens, the names of those made now)."""
    _private_dir(directory)
    made = [name for name in names if _make(directory / file_name(name))]
    return read_tokens(directory, fix=True), made


def read_tokens(directory: Path, *, fix: bool = False) -> Tokens:
    """The tokens in ``directory`` (None for a missing file); nothing is made.

    A file others may read is a warning, or with ``fix`` made 0600 (then a warning too).
    """
    found: dict[str, SecretStr | None] = {}
    for name in NAMES:
        path = directory / file_name(name)
        found[name.replace("-", "_")] = _read(path, fix=fix) if _exists(path) else None
    return Tokens(**found)


def _exists(path: Path) -> bool:
    try:
        return path.lstat() is not None
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise TokensError(f"{path}: {exc.strerror or exc}") from None


def _private_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        info = directory.stat()
    except FileExistsError:
        raise TokensError(f"{directory}: exists and is not a directory") from None
    except OSError as exc:
        raise TokensError(f"{directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise TokensError(f"{directory}: exists and is not a directory")
    if info.st_mode & 0o077:
        _chmod(directory, DIR_MODE, info.st_mode)


def _chmod(path: Path, mode: int, was: int) -> None:
    try:
        path.chmod(mode)
    except OSError as exc:
        raise TokensError(
            f"{path}: mode {stat.S_IMODE(was):04o} lets others read tokens, and it cannot be "
            f"made {mode:04o}: {exc.strerror or exc}"
        ) from None
    log.warning(
        "%s was mode %04o (others could read it); made it %04o. Delete a token file to make "
        "a new token if someone may have read it",
        path,
        stat.S_IMODE(was),
        mode,
    )


def _make(path: Path) -> bool:
    """Make the token file ``path`` unless it exists; True if this call made it."""
    if _exists(path):
        return False
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600, O_EXCL
    try:
        with os.fdopen(fd, "w") as file:
            file.write(new_token() + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(temp, path)  # fails if another process made it first: theirs is kept
    except FileExistsError:
        return False
    except OSError as exc:
        raise TokensError(f"{path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    return True


def _read(path: Path, *, fix: bool) -> SecretStr:
    try:
        info = path.stat()
    except OSError as exc:
        raise TokensError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokensError(f"{path}: not a regular file")
    if info.st_mode & 0o077:
        if fix:
            _chmod(path, FILE_MODE, info.st_mode)
        else:
            log.warning(
                "%s is mode %04o: others may read the token (chmod 600 it)",
                path,
                stat.S_IMODE(info.st_mode),
            )
    try:
        return read_token_file(path, flag="token file")
    except ValueError as exc:
        raise TokensError(f"{exc}; delete it to make a new token") from None


def default_dir() -> Path:
    """``$LLMSVC_TOKENS_DIR``, else ``$LLMSVC_LOGS_DIR/tokens``, else ``logs/tokens``."""
    if os.environ.get("LLMSVC_TOKENS_DIR"):
        return Path(os.environ["LLMSVC_TOKENS_DIR"])
    if os.environ.get("LLMSVC_LOGS_DIR"):
        return Path(os.environ["LLMSVC_LOGS_DIR"]) / "tokens"
    return DEFAULT_DIR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Make the missing tokens of a stack (registry write and admin tokens, "
        "router admin token, the router's and batch service's shared token) in a private "
        "directory, keep the existing ones, and print "
        "the directory and file names, never the tokens (unless --show).",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=os.environ.get("LLMSVC_TOKENS_DIR") or None,
        help="the tokens directory (default: $LLMSVC_LOGS_DIR/tokens, "
        "else logs/tokens: where `llmsvc up` keeps them) [env LLMSVC_TOKENS_DIR]",
    )
    parser.add_argument(
        "--show",
        choices=NAMES,
        default=os.environ.get("LLMSVC_TOKENS_SHOW") or None,
        help="print this one token and nothing else (for scripts); makes nothing "
        "[env LLMSVC_TOKENS_SHOW]",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    logging.basicConfig(format=f"{PROG}: warning: %(message)s", stream=sys.stderr)
    directory: Path = args.dir or default_dir()
    try:
        if args.show:
            token = read_tokens(directory).get(args.show)
            if token is None:
                die(PROG, f"no {args.show} token in {directory}/ (run `llmsvc tokens` first)", 1)
            print(token.get_secret_value())
            return 0
        _, made = _ensure(directory, NAMES)
    except TokensError as exc:
        die(PROG, str(exc), 1)
    print(f"tokens in {directory}/ (mode {DIR_MODE:04o}, files {FILE_MODE:04o}):")
    for name in NAMES:
        print(f"  {file_name(name):<22} {'made now' if name in made else 'kept'}")
    return 0
