"""Start the engine in its own process group and stop it: SIGTERM, wait, SIGKILL.

On Linux the engine gets a parent-death signal (``PR_SET_PDEATHSIG`` = SIGKILL),
so no engine outlives a babysitter that was SIGKILLed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

from llmsvc.babysitter.output import MAX_LINE

log = logging.getLogger("llmsvc.babysitter.process")

PR_SET_PDEATHSIG = 1


def _parent_death_signal(parent: int) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:  # runs in the child between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


async def spawn(argv: Sequence[str], *, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """Start ``argv`` with ``env`` added to ours, in a new session, stdout and stderr piped."""
    full_env = {**os.environ, **env}
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
        start_new_session=True,
        preexec_fn=_parent_death_signal(os.getpid()),
        limit=MAX_LINE,
    )


async def group_gone(pgid: int, *, timeout: float) -> bool:
    """Wait until no process of group ``pgid`` is left (up to ``timeout`` s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def stop(proc: asyncio.subprocess.Process, *, timeout: float, resume: bool = False) -> int:
    """SIGTERM the engine's process group, wait ``timeout`` s, then SIGKILL it. The returncode.

    ``resume``: also SIGCONT the group, so that a stopped engine (SIGSTOP, a debugger's
    freeze) gets its SIGTERM rather than sitting it out until the SIGKILL.
    """
    if proc.returncode is None:
        _signal_group(proc, signal.SIGTERM)
        if resume:
            _signal_group(proc, signal.SIGCONT)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("engine pid %d ignored SIGTERM for %.1fs; killing it", proc.pid, timeout)
    _signal_group(proc, signal.SIGKILL)  # also any worker the engine left behind
    return await proc.wait()
