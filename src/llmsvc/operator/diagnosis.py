"""Why is an engine pod failing? Read from the pod's status, as ``kubectl describe`` shows it.

:func:`pod_problem` returns a :class:`Problem` (a reason word and one sentence
naming the pod) or ``None`` for a pod that is fine or merely starting:

* ``Unschedulable``: condition PodScheduled False with reason Unschedulable
  (no node has the GPUs, a taint is not tolerated, ...).
* ``ImagePullBackOff``: the engine image cannot be pulled (also ErrImagePull,
  InvalidImageName, ErrImageNeverPull).
* ``CreateContainerConfigError`` and friends: e.g. the HF token Secret is missing.
* The babysitter's failure reasons (:data:`llmsvc.core.names.FAILURES`:
  ``OOMKilled``, ``GPUOutOfMemory``, ``Hung``, ...): the babysitter writes ``<Reason>:
  <message>`` to the termination log and, with ``--exit-on-crash-loop``, exits
  when its engine keeps failing, so the container's (last) terminated state
  carries them. The kubelet's own ``OOMKilled`` counts too.
* ``CrashLoop``: the container is in CrashLoopBackOff for no reason known.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmsvc.core.names import Reason, parse_termination_message

IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
MESSAGE_MAX = 300  # characters of a termination message quoted in a condition


@dataclass(frozen=True)
class Problem:
    """One failing pod: a reason word and one sentence naming the pod."""

    reason: str
    message: str


def field(obj: Mapping[str, Any] | None, *path: str) -> Any:
    """``obj[path[0]][path[1]]...`` or ``None`` where a step is missing."""
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def pod_problem(pod: Mapping[str, Any]) -> Problem | None:
    """Why ``pod`` fails, or ``None`` when it is running, starting or gone."""
    name = field(pod, "metadata", "name") or "?"
    if field(pod, "metadata", "deletionTimestamp") or field(pod, "status", "phase") in (
        "Succeeded",
        "Failed",
    ):
        return None
    for cond in field(pod, "status", "conditions") or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            why = _one_line(cond.get("message")) or "no node fits"
            return Problem("Unschedulable", f"pod {name} cannot be scheduled: {why}")
    for status in field(pod, "status", "containerStatuses") or []:
        problem = _container_problem(name, status)
        if problem is not None:
            return problem
    return None


def _container_problem(pod: str, status: Mapping[str, Any]) -> Problem | None:
    waiting = field(status, "state", "waiting") or {}
    waiting_reason = waiting.get("reason", "")
    waiting_message = _one_line(waiting.get("message"))
    if waiting_reason in IMAGE_PULL_REASONS:
        image = status.get("image", "")
        why = waiting_message or waiting_reason
        return Problem("ImagePullBackOff", f"pod {pod} cannot pull image {image}: {why}")
    if waiting_reason in CONFIG_REASONS:
        why = waiting_message or waiting_reason
        return Problem(waiting_reason, f"pod {pod} cannot start its engine container: {why}")
    terminated = field(status, "state", "terminated")
    current = terminated is not None
    if terminated is None and not status.get("ready"):
        terminated = field(status, "lastState", "terminated")
    crash_loop = waiting_reason == "CrashLoopBackOff"
    if not crash_loop and (terminated is None or terminated.get("exitCode") == 0):
        return None  # running, starting, or stopped on purpose
    known = _termination_reason(terminated or {})
    if known is None:
        if not crash_loop:
            return None
        code = field(terminated, "exitCode")
        detail = f" (last exit code {code})" if code is not None else ""
        return Problem(
            "CrashLoop",
            f"pod {pod}'s engine container keeps failing{detail}; see kubectl logs --previous",
        )
    reason, detail = known
    when = "ended" if current else "last ended"
    tail = "; restarting with back-off (CrashLoopBackOff)" if crash_loop else ""
    return Problem(reason, f"pod {pod}'s engine {when} with {reason}: {detail}{tail}")


def _termination_reason(terminated: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) of a terminated container state, if it names a known reason."""
    found = parse_termination_message(str(terminated.get("message") or ""))
    if found is not None:
        reason, detail = found
        return str(reason), _one_line(detail) or str(reason)
    if terminated.get("reason") == Reason.OOM_KILLED:  # the kubelet's word is the same
        return str(Reason.OOM_KILLED), "the container went over its memory limit"
    return None


def _one_line(text: Any) -> str:
    """The first non-empty line of ``text``, at most :data:`MESSAGE_MAX` characters."""
    for line in str(text or "").splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= MESSAGE_MAX else line[: MESSAGE_MAX - 3] + "..."
    return ""
