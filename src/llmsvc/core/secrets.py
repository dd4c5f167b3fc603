"""Tokens: made here, read from flags, variables or files, never printed.

Every token a component takes (the registry's write and admin tokens, the
router's admin token, the token a router or babysitter sends to the registry)
can be given three ways: the flag itself (``--token``), its variable
(``LLMSVC_TOKEN``), or a file (``--token-file``: a mounted Kubernetes Secret,
compose's generated tokens, a systemd credential). :func:`from_flag_or_file`
is the one rule for all of them; :func:`new_token` is the one way a token is
made (``llmsvc up``, compose's token step).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import SecretStr

MAX_TOKEN_FILE_BYTES = 4096
"""A token file larger than this is not a token file (a mistaken path)."""


def new_token() -> str:
    """A fresh random token: 32 bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def read_token_file(path: Path, *, flag: str) -> SecretStr:
    """The token in ``path``: its text with surrounding whitespace (a final newline) removed.

    Raises ValueError with a one-line message naming ``flag`` when the file cannot
    be read, is too large, is not UTF-8, is empty, or holds more than one line.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(f"{flag} {path}: larger than {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {path}: not UTF-8 text") from None
    if not text:
        raise ValueError(f"{flag} {path}: the file is empty")
    if any(c in text for c in "\r\n"):
        raise ValueError(f"{flag} {path}: holds more than one line (one token expected)")
    return SecretStr(text)


def from_flag_or_file(value: SecretStr | None, file: Path | None, *, flag: str) -> SecretStr | None:
    """The token given by ``flag`` (``--token``) or by its file (``--token-file``).

    An empty value counts as none. Giving both is an error: which one wins would
    be a guess.
    """
    if value is not None and not value.get_secret_value():
        value = None
    if file is None:
        return value
    if value is not None:
        raise ValueError(f"give {flag} or {flag}-file, not both")
    return read_token_file(file, flag=f"{flag}-file")
