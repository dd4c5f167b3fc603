"""Telling Kubernetes why: the termination message, and exiting when restarts stop.

Kubernetes shows the file at a container's ``terminationMessagePath`` (normally
``/dev/termination-log``) in the pod's status once the container ends
(``state.terminated.message`` / ``lastState.terminated.message``), and ``kubectl
describe pod`` prints it. With ``--termination-log`` the babysitter writes there, after
every failed engine life, one line that starts with the reason:
``OOMKilled: the kernel killed the engine (out of memory)`` (the format, shared with
the operator that reads it back, is in :mod:`llmsvc.core.names`). With
``--exit-on-crash-loop`` it exits 1 when it stops restarting (``crash-loop`` or
``failed``), so that the kubelet restarts the container with its own back-off
(``CrashLoopBackOff``) and the operator reads the reason from the pod.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from llmsvc.babysitter.lifecycle import ExitRecord
from llmsvc.core.names import termination_message

log = logging.getLogger("llmsvc.babysitter.termination")

EXIT_CODE = 1  # the babysitter gave up: the kubelet restarts the container (CrashLoopBackOff)


def message(record: ExitRecord, note: str = "") -> str:
    """This record's termination message (:func:`llmsvc.core.names.termination_message`)."""
    return termination_message(record.reason, record.detail, note)


def write(path: str | None, record: ExitRecord, note: str = "") -> None:
    """Replace the termination message with this record's (no-op without a path)."""
    if not path:
        return
    try:
        Path(path).write_text(message(record, note) + "\n")
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)


class GiveUp:
    """The supervisor's word that restarts stopped for good (``--exit-on-crash-loop``).

    :func:`~llmsvc.core.serving.serve` waits on :attr:`stop` beside SIGTERM and SIGINT
    and stops the same way (drain, deregister, stop the engine); the CLI then exits
    :data:`EXIT_CODE` (:meth:`exit_code`).
    """

    def __init__(self) -> None:
        self.stop = asyncio.Event()  # serve() sets it on SIGTERM/SIGINT too
        self.why: str | None = None  # set once given up

    def give_up(self, why: str) -> None:
        self.why = why
        self.stop.set()

    def exit_code(self, served: int) -> int:
        """The process's exit status, from :func:`serve`'s: :data:`EXIT_CODE` once given up."""
        return EXIT_CODE if served == 0 and self.why is not None else served
