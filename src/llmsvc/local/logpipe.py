"""The writer of one ``llmsvc up`` component's log: its output in, a size-rotated file out.

``llmsvc up`` starts each component with its stdout and stderr on a pipe and this
process, detached beside it, at the other end (``python -m llmsvc.local.logpipe PATH
MAX_BYTES BACKUPS``). It writes what arrives line by line through the same
:class:`~llmsvc.core.rotating.RotatingFile` the babysitter writes its engines' logs
with, so a component that runs for months keeps at most ``(backups + 1) × max_bytes``
on disk (the file's ``logs: {max_bytes, backups}``). It ignores SIGINT, SIGTERM and
SIGHUP and ends at end of file: when the component, and whatever it started that
kept its output, has exited, so the last words of a dying component are written too.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from llmsvc.core.rotating import RotatingFile

MAX_LINE = 64 * 1024  # longer lines are written in pieces of this size


def pump(source: BinaryIO, target: RotatingFile) -> None:
    """Copy ``source`` into ``target`` line by line until end of file."""
    while True:
        line = source.readline(MAX_LINE)
        if not line:
            return
        target.write(line)


def main(argv: Sequence[str]) -> int:
    path, max_bytes, backups = argv
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    target = RotatingFile(Path(path), max_bytes=int(max_bytes), backups=int(backups))
    try:
        pump(sys.stdin.buffer, target)
    finally:
        target.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
