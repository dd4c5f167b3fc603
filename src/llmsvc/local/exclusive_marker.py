"""The marker file of ``llmsvc exclusive``: what it has done so far, for ``--restore``.

Written before each step, so that an ``exclusive`` killed at any point (SIGKILL, a
crash, the OOM killer) leaves a record of which babysitter it stopped; ``llmsvc
exclusive --restore`` reads it, and a second ``exclusive`` of the same babysitter
refuses to start while it is there.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


class ExclusiveError(Exception):
    """Something ``exclusive`` cannot do; its message is the one line printed."""


def default_state_dir() -> Path:
    """``$XDG_RUNTIME_DIR/llmsvc``, else ``/tmp/llmsvc-<uid>`` (the babysitters' GPU lock
    directory): per user, cleared at reboot, when the engine's process is gone anyway."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "llmsvc" if runtime else Path(f"/tmp/llmsvc-{os.getuid()}")


@dataclass(frozen=True)
class Marker:
    """``<state dir>/exclusive-<host>_<port>.json``: what an ``exclusive`` of one
    babysitter has done so far (``step``: stopping, running, restoring)."""

    path: Path

    @classmethod
    def for_babysitter(cls, state_dir: Path, url: str) -> Marker:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://", 1)[-1]).strip("_")
        return cls(state_dir / f"exclusive-{slug}.json")

    def read(self) -> dict[str, Any] | None:
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ExclusiveError(f"cannot read the marker {self.path}: {exc}") from None
        return data if isinstance(data, dict) else None

    def write(self, **fields: Any) -> None:
        """Atomically, 0600: a reader sees the old record or the new one, never half."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps({**(self.read() or {}), **fields}, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    """True while ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
