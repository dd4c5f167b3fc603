"""An append-only file rotated by size: the engines' logs and ``llmsvc up``'s component logs.

One mechanism for every log llmsvc writes to disk, so none fills it: at ``max_bytes``
the file moves to ``<name>.1`` (``.1`` to ``.2`` …, the oldest beyond ``backups``
dropped) and a new one starts; ``max_bytes`` 0 never rotates, ``backups`` 0 truncates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO


class RotatingFile:
    """An append-only binary file rotated at ``max_bytes`` into ``backups`` numbered copies."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self._max = max_bytes
        self._backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed in close()
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        if self._max > 0 and self._size and self._size + len(data) > self._max:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        if self._backups > 0:
            for i in range(self._backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "wb")  # noqa: SIM115 - truncates when no backups are kept
        self._size = 0

    def close(self) -> None:
        self._file.close()
