"""The lease file: the registry leases a babysitter holds, kept beside its logs.

A registration returns a lease for the name (``POST /services``'s ``lease``);
whoever presents it keeps the name. With ``--log-dir`` the babysitter keeps its
leases in ``<log-dir>/<name>.leases.json`` (``{"<record name>": "<lease>"}``,
mode 0600: a lease lets its holder replace and remove the record), so that a
babysitter restarted on the same host and port presents them and has its names
back at once instead of waiting for the old registration's heartbeat to expire.

The file is written atomically (a temporary file in the same directory, then
``os.replace``) whenever a lease changes, which is rare: a few hundred bytes,
short and bounded, so it is written on the loop, as the logs are. A file that
cannot be read or parsed is a WARNING and is ignored (the babysitter then gets
new leases); one that cannot be written is a WARNING and the leases stay in
memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import orjson

log = logging.getLogger("llmsvc.babysitter.registration")

MAX_FILE_BYTES = 64 * 1024
"""A lease file larger than this is not ours: ignored."""


class LeaseFile:
    """Where the leases are kept; ``path`` None keeps them in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        """The leases in the file; empty when there is none or it cannot be used."""
        if self.path is None:
            return {}
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("ignoring the lease file %s: %s", self.path, exc.strerror or exc)
            return {}
        leases = _parse(raw)
        if leases is None:
            log.warning("ignoring the lease file %s: not a JSON object of names and leases",
                        self.path)  # fmt: skip
            return {}
        return leases

    def save(self, leases: dict[str, str]) -> None:
        """Replace the file with ``leases`` (atomically, mode 0600)."""
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(orjson.dumps(leases, option=orjson.OPT_SORT_KEYS))
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write the lease file %s (leases kept in memory): %s",
                        self.path, exc.strerror or exc)  # fmt: skip


def _parse(raw: bytes) -> dict[str, str] | None:
    if len(raw) > MAX_FILE_BYTES:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and v}
