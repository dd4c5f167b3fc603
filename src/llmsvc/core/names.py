"""The names several components share, in one place: each side imports them from here.

- **Labels and annotations** (``llmsvc.io/...``): the operator writes them on the
  objects it builds, the registry's Kubernetes source reads them back, and the
  operator's own watches select by them.
- **Reason words** (:class:`Reason`): why an engine process ended. The babysitter
  classifies every exit into one of them (``/status`` ``last_exit.reason``, the
  ``reason`` metric label); the operator reads them back from a pod's termination
  message into an InferenceService's conditions. ``docs/engines.md`` documents them.
- **The termination message** (:func:`termination_message`,
  :func:`parse_termination_message`): the line the babysitter writes to the
  container's ``terminationMessagePath`` after a failed engine life, and the operator
  finds in ``state.terminated.message``: ``<Reason>: <detail>[; <note>]``.
"""

from __future__ import annotations

import re
from enum import StrEnum

INFERENCE_SERVICE_LABEL = "llmsvc.io/inference-service"
"""Label on every child of an InferenceService (Deployment, pods, Service, its
EndpointSlices): the owner's name, as a label value."""
MODEL_LABEL = "llmsvc.io/model"
"""Label with the served model's name, cut to a label value (no ``/``)."""
MODEL_ANNOTATION = "llmsvc.io/model"
"""Annotation with the exact served model name (preferred over :data:`MODEL_LABEL`)."""
WEIGHT_ANNOTATION = "llmsvc.io/weight"
"""Service annotation: each replica's routing weight, 1 to 1000."""
MAINTENANCE_ANNOTATION = "llmsvc.io/maintenance"
"""InferenceService annotation (copied onto its Service by the operator): the model is in
maintenance, with this message; the registry's Kubernetes source turns it into an entry."""
MAINTENANCE_UNTIL_ANNOTATION = "llmsvc.io/maintenance-until"
"""With :data:`MAINTENANCE_ANNOTATION`: when the maintenance ends (RFC 3339, with an offset)."""
MAINTENANCE_ANNOTATIONS = (MAINTENANCE_ANNOTATION, MAINTENANCE_UNTIL_ANNOTATION)
"""The annotations the operator copies from an InferenceService onto its Service."""
SCALING_SINCE_ANNOTATION = "llmsvc.io/scaling-since"
"""Service annotation the operator's autoscaler writes while a scale-up from zero waits for
its first ready pod: when it began (Unix seconds); removed once a pod is ready. The
registry's Kubernetes source puts it in the zero-endpoint record's ``metadata.starting_since``."""
COLD_START_ANNOTATION = "llmsvc.io/cold-start-seconds"
"""Service annotation: the last measured cold start (scale-up from zero to a ready pod), in
seconds; the zero-endpoint record's ``metadata.startup_seconds`` (the router's hold estimate)."""
FINALIZER = "llmsvc.io/finalizer"
"""The operator's finalizer on an InferenceService (its children are deleted first)."""
ANNOTATIONS_PREFIX = "llmsvc.io"
"""Prefix of the annotations the operator keeps its progress and diff-base in."""


class Reason(StrEnum):
    """Why an engine process ended (``last_exit.reason``, the ``reason`` metric label)."""

    OOM_KILLED = "OOMKilled"  # SIGKILL and the cgroup's (or the kernel's) OOM-kill count rose
    GPU_OUT_OF_MEMORY = "GPUOutOfMemory"  # a CUDA out-of-memory error in its stderr
    CUDA_ERROR = "CUDAError"  # another CUDA error in its stderr
    BAD_ARGUMENTS = "BadArguments"  # exited within seconds with a usage message
    STARTUP_TIMEOUT = "StartupTimeout"  # not ready within --startup-timeout; killed
    HUNG = "Hung"  # failed --hung-after health checks in a row while alive; killed
    EXITED = "Exited"  # exited on its own with a code (in last_exit.code)
    SIGNALED = "Signaled"  # ended by a signal (in last_exit.signal)
    PREFLIGHT_FAILED = "PreflightFailed"  # not launched: too little free (GPU) memory
    SPAWN_FAILED = "SpawnFailed"  # could not be executed at all
    REQUESTED = "Requested"  # POST /restart
    SWAPPED = "Swapped"  # POST /model replaced it
    STOPPED = "Stopped"  # the babysitter shut down
    STANDBY = "Standby"  # idle for --idle-timeout: stopped until POST /wake (--standby stop)


INTENDED = frozenset({Reason.REQUESTED, Reason.SWAPPED, Reason.STOPPED, Reason.STANDBY})
"""Ends the babysitter asked for: no failure, no backoff, no termination message."""
FAILURES = tuple(r for r in Reason if r not in INTENDED)
"""The reasons of a failed engine life: those a termination message can carry."""

TERMINATION_MESSAGE_MAX_BYTES = 4096
"""What the kubelet reads of a termination message."""

_REASON_LINE = re.compile(r"^\s*(" + "|".join(FAILURES) + r"):\s*(.*)$")


def termination_message(reason: Reason, detail: str, note: str = "") -> str:
    """``<Reason>: <detail>[; <note>]``, at most :data:`TERMINATION_MESSAGE_MAX_BYTES` of UTF-8."""
    text = f"{reason}: {detail or 'no detail'}"
    if note:
        text += f"; {note}"
    return text.encode()[:TERMINATION_MESSAGE_MAX_BYTES].decode(errors="ignore")


def parse_termination_message(message: str) -> tuple[Reason, str] | None:
    """The failure reason and the rest of the first line that starts with one, if any."""
    for line in message.splitlines():
        match = _REASON_LINE.match(line)
        if match:
            return Reason(match.group(1)), match.group(2)
    return None
