"""An InferenceService's status, computed from what the cluster shows (a pure function).

:func:`compute_status` looks at the spec (or why it is invalid), the Deployment
and the engine pods, and returns the whole status: ``phase``, replica counts,
``selector`` (for the scale subresource), ``endpoints`` and three conditions in
metav1.Condition form, each condition's ``lastTransitionTime`` kept from
``previous`` while its status does not change.

========== ================================================ ==========================
phase      when                                             reason (Ready condition)
========== ================================================ ==========================
Failed     the spec is invalid: nothing is created          InvalidSpec
Pending    the Deployment does not exist yet                Creating
Progressing rolling out, or not all replicas ready yet      RollingOut
Ready      all desired replicas ready, rollout complete     MinimumReplicasAvailable,
                                                            ScaledToZero (replicas 0)
Degraded   a pod fails (see :mod:`.diagnosis`), or no       the pod's reason,
           progress within progressDeadlineSeconds          ProgressDeadlineExceeded
========== ================================================ ==========================

"Desired replicas" is ``spec.replicas``, except for an autoscaled service: there it
is the Deployment's ``spec.replicas``, what the autoscaler set (``spec.replicas`` is
only the initial size), so a service the autoscaler took to zero is Ready with
reason ScaledToZero, and the READY column counts against the autoscaler's number.

The autoscaler writes its own status fields (``desiredReplicas``, ``lastScaleTime``,
``lastColdStartSeconds``) and may add conditions of other types by merge patch;
this computation keeps them as they were while the service is autoscaled (a
refresh neither drops them nor patches them back and forth), and drops the three
fields once autoscaling is removed. Conditions of types other than the three here
are always kept as their writer left them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from llmsvc.core.names import INFERENCE_SERVICE_LABEL
from llmsvc.operator.builders import initial_replicas, label_value
from llmsvc.operator.diagnosis import field, pod_problem
from llmsvc.operator.spec import (
    Condition,
    Endpoint,
    InferenceServiceSpec,
    InferenceServiceStatus,
    Phase,
    SpecError,
)

CONDITION_TYPES = ("Ready", "Progressing", "Degraded")
AUTOSCALER_FIELDS = ("desired_replicas", "last_scale_time", "last_cold_start_seconds")
"""Status fields the autoscaler writes (by merge patch), kept while autoscaled."""
CONDITION_MESSAGE_MAX = 32768  # metav1.Condition's limit


@dataclass(frozen=True)
class Verdict:
    """The phase, and the reason and sentence behind it."""

    phase: Phase
    reason: str
    message: str


def compute_status(
    *,
    spec: InferenceServiceSpec | None,
    error: SpecError | None,
    generation: int,
    name: str,
    deployment: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    previous: InferenceServiceStatus | None,
    now: datetime,
) -> InferenceServiceStatus:
    """The status of InferenceService ``name`` at generation ``generation``."""
    replicas = int(field(deployment, "status", "replicas") or 0)
    ready = int(field(deployment, "status", "readyReplicas") or 0)
    if spec is None or error is not None:
        why = str(error) if error is not None else "the spec could not be read"
        verdict = Verdict(
            "Failed", "InvalidSpec", f"The spec is invalid, nothing is created or updated: {why}"
        )
        desired = replicas
    else:
        verdict = assess(spec, name, deployment, pods)
        desired = target_replicas(spec, deployment)
    return InferenceServiceStatus(
        phase=verdict.phase,
        replicas=replicas,
        ready_replicas=ready,
        ready=f"{ready}/{desired}",
        selector=f"{INFERENCE_SERVICE_LABEL}={label_value(name)}",
        observed_generation=generation,
        endpoints=endpoints(pods),
        conditions=conditions(verdict, generation, previous, now),
        **autoscaler_fields(spec, error, previous),
    )


def target_replicas(spec: InferenceServiceSpec, deployment: Mapping[str, Any] | None) -> int:
    """The replicas the service should have now: ``spec.replicas``, or for an autoscaled
    service the Deployment's ``spec.replicas`` (the autoscaler's; before the Deployment
    exists, the initial size)."""
    if spec.autoscaling is None:
        return spec.replicas
    live = field(deployment, "spec", "replicas")
    if isinstance(live, int) and not isinstance(live, bool):
        return live
    return initial_replicas(spec)


def autoscaler_fields(
    spec: InferenceServiceSpec | None,
    error: SpecError | None,
    previous: InferenceServiceStatus | None,
) -> dict[str, Any]:
    """The autoscaler's status fields from ``previous``: kept while autoscaled (and while
    the spec is invalid: nothing is changed then), none once autoscaling is removed."""
    if previous is None:
        return {}
    if spec is not None and error is None and spec.autoscaling is None:
        return {}
    return {key: getattr(previous, key) for key in AUTOSCALER_FIELDS}


def assess(
    spec: InferenceServiceSpec,
    name: str,
    deployment: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
) -> Verdict:
    """The phase of a valid InferenceService and why."""
    if deployment is None:
        return Verdict("Pending", "Creating", f"Waiting for Deployment {name} to be created.")
    desired, model = target_replicas(spec, deployment), spec.model.name
    replicas = int(field(deployment, "status", "replicas") or 0)
    ready = int(field(deployment, "status", "readyReplicas") or 0)
    updated = int(field(deployment, "status", "updatedReplicas") or 0)
    if _current(deployment, desired):
        if desired == 0 and replicas == 0:
            return Verdict("Ready", "ScaledToZero", _scaled_to_zero(spec))
        if desired > 0 and ready >= desired and updated >= desired and replicas == desired:
            return Verdict(
                "Ready",
                "MinimumReplicasAvailable",
                f"{ready}/{desired} replicas ready, serving {model}.",
            )
    live = sorted(pods, key=lambda pod: str(field(pod, "metadata", "name")))
    problems = [p for p in map(pod_problem, live) if p is not None]
    if problems:
        more = f" ({len(problems)} of {len(live)} pods failing)" if len(problems) > 1 else ""
        return Verdict("Degraded", problems[0].reason, problems[0].message + more)
    if _deadline_exceeded(deployment):
        deadline = field(deployment, "spec", "progressDeadlineSeconds")
        return Verdict(
            "Degraded",
            "ProgressDeadlineExceeded",
            f"Deployment {name} made no progress within {deadline} s: "
            f"{ready}/{desired} replicas ready.",
        )
    if desired == 0:
        return Verdict("Progressing", "RollingOut", f"Scaling Deployment {name} down to zero.")
    return Verdict(
        "Progressing",
        "RollingOut",
        f"Rolling out {model}: {ready}/{desired} replicas ready, {updated} updated.",
    )


def _scaled_to_zero(spec: InferenceServiceSpec) -> str:
    model, scaling = spec.model.name, spec.autoscaling
    if scaling is not None and scaling.min_replicas == 0:
        return (
            f"Scaled to zero by the autoscaler: no pod serves {model}; the first request "
            f"scales it up (minReplicas 0), held by the router meanwhile."
        )
    return f"Scaled to zero: no pod serves {model}."


def _current(deployment: Mapping[str, Any], desired: int) -> bool:
    """The Deployment's controller has seen its latest spec, which asks for ``desired``."""
    generation = field(deployment, "metadata", "generation")
    observed = field(deployment, "status", "observedGeneration")
    seen = generation is None or (observed is not None and observed >= generation)
    return seen and field(deployment, "spec", "replicas") in (desired, None)


def _deadline_exceeded(deployment: Mapping[str, Any]) -> bool:
    for cond in field(deployment, "status", "conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return True
    return False


def endpoints(pods: Sequence[Mapping[str, Any]]) -> list[Endpoint]:
    """Every engine pod that is not finished, by name, with its IP and readiness."""
    out = []
    for pod in pods:
        if field(pod, "status", "phase") in ("Succeeded", "Failed"):
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in field(pod, "status", "conditions") or []
        )
        name = str(field(pod, "metadata", "name") or "")
        out.append(Endpoint(pod=name, ip=str(field(pod, "status", "podIP") or ""), ready=ready))
    return sorted(out, key=lambda e: e.pod)


def conditions(
    verdict: Verdict,
    generation: int,
    previous: InferenceServiceStatus | None,
    now: datetime,
) -> list[Condition]:
    """Ready, Progressing and Degraded for ``verdict``."""
    phase = verdict.phase
    statuses: dict[str, bool] = {
        "Ready": phase == "Ready",
        "Progressing": phase in ("Pending", "Progressing"),
        "Degraded": phase in ("Degraded", "Failed"),
    }
    before = {c.type: c for c in previous.conditions} if previous is not None else {}
    stamp = rfc3339(now)
    out: list[Condition] = []
    for kind in CONDITION_TYPES:
        status: Literal["True", "False"] = "True" if statuses[kind] else "False"
        old = before.get(kind)
        since = old.last_transition_time if old is not None and old.status == status else stamp
        out.append(
            Condition(
                type=kind,
                status=status,
                reason=verdict.reason,
                message=verdict.message[:CONDITION_MESSAGE_MAX],
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    # Others' conditions (the autoscaler's) as they are: a merge patch replaces the list.
    out.extend(c for c in before.values() if c.type not in CONDITION_TYPES)
    return out


def rfc3339(moment: datetime) -> str:
    """``moment`` in UTC as Kubernetes writes times (``2026-01-02T03:04:05Z``)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
