"""compute_status: a table of cluster states → phase, reason and message; condition timestamps.

The Deployments and pods are written the way the API server returns them
(``kubectl get -o yaml`` shapes), including the babysitter's termination
messages (``<Reason>: <message>``) in ``lastState.terminated``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llmsvc.babysitter import termination
from llmsvc.babysitter.lifecycle import ExitRecord, Reason
from llmsvc.operator.diagnosis import pod_problem
from llmsvc.operator.reconcile import status_body, status_patch
from llmsvc.operator.spec import Condition, InferenceServiceStatus, SpecError, parse_spec
from llmsvc.operator.status import compute_status, rfc3339

NAME = "qwen3-32b"
T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
SPEC = parse_spec(
    {
        "model": {"name": "Qwen3-32B", "uri": "hf://Qwen/Qwen3-32B"},
        "engine": {"type": "vllm"},
        "replicas": 2,
    }
)


def deployment(
    *,
    replicas: int = 2,
    ready: int = 0,
    updated: int | None = None,
    want: int = 2,
    generation: int = 1,
    observed: int = 1,
    deadline_exceeded: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": observed,
        "replicas": replicas,
        "updatedReplicas": replicas if updated is None else updated,
        "readyReplicas": ready,
    }
    if not ready:
        del status["readyReplicas"]  # the API server omits zero counts
    if deadline_exceeded:
        status["conditions"] = [
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": f'ReplicaSet "{NAME}-7d9f" has timed out progressing.',
            }
        ]
    return {
        "metadata": {"name": NAME, "generation": generation},
        "spec": {"replicas": want, "progressDeadlineSeconds": 2400},
        "status": status,
    }


def pod(
    name: str,
    *,
    ready: bool = False,
    ip: str = "",
    waiting: tuple[str, str] | None = None,
    terminated: dict[str, Any] | None = None,
    last: dict[str, Any] | None = None,
    unschedulable: str | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = [{"type": "Ready", "status": str(ready)}]
    if unschedulable is not None:
        conditions = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        ]
    state: dict[str, Any] = {"running": {"startedAt": "2026-11-22T11:00:00Z"}}
    if waiting is not None:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    if terminated is not None:
        state = {"terminated": terminated}
    container: dict[str, Any] = {
        "name": "engine",
        "image": "ghcr.io/llmsvc/babysitter-vllm:0.1.0",
        "ready": ready,
        "restartCount": 1 if last else 0,
        "state": state,
        "lastState": {"terminated": last} if last else {},
    }
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    if unschedulable is None:
        status["containerStatuses"] = [container]
    if ip:
        status["podIP"] = ip
    return {"metadata": {"name": name}, "status": status}


def crashed(message: str, code: int = 1, reason: str = "Error") -> dict[str, Any]:
    return {"exitCode": code, "reason": reason, "message": message}


def status_of(
    dep: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    *,
    spec: Any = SPEC,
    error: SpecError | None = None,
    previous: InferenceServiceStatus | None = None,
    now: datetime = T0,
) -> InferenceServiceStatus:
    return compute_status(
        spec=spec,
        error=error,
        generation=3,
        name=NAME,
        deployment=dep,
        pods=pods,
        previous=previous,
        now=now,
    )


def ready_pods(n: int) -> list[dict[str, Any]]:
    return [pod(f"{NAME}-{i}", ready=True, ip=f"10.0.0.{i}") for i in range(n)]


OOM_SITTER = "OOMKilled: engine killed by SIGKILL after an out-of-memory kill"
GPU_OOM = "GPUOutOfMemory: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.0 GiB"

# (id, deployment, pods, phase, reason, words in the message)
TABLE = [
    ("no-deployment", None, [], "Pending", "Creating", "Waiting for Deployment qwen3-32b"),
    (
        "all-ready",
        deployment(ready=2),
        ready_pods(2),
        "Ready",
        "MinimumReplicasAvailable",
        "2/2 replicas ready",
    ),
    (
        "loading",
        deployment(ready=1),
        [*ready_pods(1), pod(f"{NAME}-1", ip="10.0.0.9")],
        "Progressing",
        "RollingOut",
        "1/2 replicas ready",
    ),
    (
        "deployment-not-observed-yet",
        deployment(ready=2, generation=2, observed=1),
        ready_pods(2),
        "Progressing",
        "RollingOut",
        "Rolling out Qwen3-32B",
    ),
    (
        "old-replicas-still-there",
        deployment(ready=2, updated=1),
        ready_pods(2),
        "Progressing",
        "RollingOut",
        "1 updated",
    ),
    (
        "deployment-asks-for-other-count",
        deployment(ready=2, want=3),
        ready_pods(2),
        "Progressing",
        "RollingOut",
        "2/2",
    ),
    (
        "unschedulable",
        deployment(ready=1),
        [
            *ready_pods(1),
            pod(
                f"{NAME}-1",
                unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                phase="Pending",
            ),
        ],
        "Degraded",
        "Unschedulable",
        "pod qwen3-32b-1 cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia",
    ),
    (
        "image-pull",
        deployment(),
        [
            pod(
                f"{NAME}-0",
                waiting=("ImagePullBackOff", 'Back-off pulling image "x"'),
                phase="Pending",
            )
        ],
        "Degraded",
        "ImagePullBackOff",
        "pod qwen3-32b-0 cannot pull image ghcr.io/llmsvc/babysitter-vllm:0.1.0",
    ),
    (
        "err-image-pull",
        deployment(),
        [pod(f"{NAME}-0", waiting=("ErrImagePull", "not found"), phase="Pending")],
        "Degraded",
        "ImagePullBackOff",
        "not found",
    ),
    (
        "missing-secret",
        deployment(),
        [
            pod(
                f"{NAME}-0",
                waiting=("CreateContainerConfigError", 'secret "hf-token" not found'),
                phase="Pending",
            )
        ],
        "Degraded",
        "CreateContainerConfigError",
        'secret "hf-token" not found',
    ),
    (
        "crash-loop-babysitter-oom",
        deployment(ready=1),
        [
            *ready_pods(1),
            pod(
                f"{NAME}-1", waiting=("CrashLoopBackOff", "back-off 5m0s"), last=crashed(OOM_SITTER)
            ),
        ],
        "Degraded",
        "OOMKilled",
        "pod qwen3-32b-1's engine last ended with OOMKilled: engine killed by SIGKILL",
    ),
    (
        "crash-loop-kubelet-oom",
        deployment(),
        [
            pod(
                f"{NAME}-0",
                waiting=("CrashLoopBackOff", "back-off"),
                last=crashed("", code=137, reason="OOMKilled"),
            )
        ],
        "Degraded",
        "OOMKilled",
        "memory limit",
    ),
    (
        "crash-loop-gpu-oom",
        deployment(),
        [pod(f"{NAME}-0", waiting=("CrashLoopBackOff", "back-off"), last=crashed(GPU_OOM))],
        "Degraded",
        "GPUOutOfMemory",
        "CUDA out of memory",
    ),
    (
        "crash-loop-unknown",
        deployment(),
        [pod(f"{NAME}-0", waiting=("CrashLoopBackOff", "back-off"), last=crashed("boom", code=2))],
        "Degraded",
        "CrashLoop",
        "last exit code 2",
    ),
    (
        "terminated-now-startup-timeout",
        deployment(),
        [
            pod(
                f"{NAME}-0",
                terminated=crashed("StartupTimeout: not ready within 1800 s\nlog tail..."),
            )
        ],
        "Degraded",
        "StartupTimeout",
        "pod qwen3-32b-0's engine ended with StartupTimeout: not ready within 1800 s",
    ),
    (
        "restarted-and-loading-again",
        deployment(),
        [pod(f"{NAME}-0", last=crashed("BadArguments: unrecognized arguments: --tp 4"))],
        "Degraded",
        "BadArguments",
        "--tp 4",
    ),
    (
        "clean-restart-is-no-problem",
        deployment(),
        [pod(f"{NAME}-0", last=crashed("Exited: stopped on SIGTERM", code=0))],
        "Progressing",
        "RollingOut",
        "0/2",
    ),
    (
        "deadline-exceeded",
        deployment(deadline_exceeded=True),
        [pod(f"{NAME}-0"), pod(f"{NAME}-1")],
        "Degraded",
        "ProgressDeadlineExceeded",
        "no progress within 2400 s",
    ),
    (
        "two-failing",
        deployment(),
        [
            pod(f"{NAME}-b", waiting=("CrashLoopBackOff", ""), last=crashed(GPU_OOM)),
            pod(f"{NAME}-a", waiting=("ImagePullBackOff", "")),
        ],
        "Degraded",
        "ImagePullBackOff",
        "pod qwen3-32b-a cannot pull image",
    ),
    (
        "evicted-pod-is-ignored",
        deployment(ready=1),
        [
            *ready_pods(1),
            pod(f"{NAME}-old", phase="Failed", last=crashed(GPU_OOM)),
            pod(f"{NAME}-1"),
        ],
        "Progressing",
        "RollingOut",
        "1/2",
    ),
]


@pytest.mark.parametrize(
    ("dep", "pods", "phase", "reason", "words"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_phase_and_reason(
    dep: dict[str, Any] | None, pods: list[dict[str, Any]], phase: str, reason: str, words: str
) -> None:
    status = status_of(dep, pods)
    assert status.phase == phase
    conditions = {c.type: c for c in status.conditions}
    assert list(conditions) == ["Ready", "Progressing", "Degraded"]
    ready = conditions["Ready"]
    assert ready.reason == reason
    assert words in ready.message
    assert "\n" not in ready.message
    assert ready.status == ("True" if phase == "Ready" else "False")
    assert conditions["Progressing"].status == (
        "True" if phase in ("Pending", "Progressing") else "False"
    )
    assert conditions["Degraded"].status == ("True" if phase in ("Degraded", "Failed") else "False")
    assert all(c.observed_generation == 3 for c in status.conditions)
    assert all(c.last_transition_time == "2026-11-22T12:00:00Z" for c in status.conditions)


def test_two_failing_pods_are_counted() -> None:
    pods = [
        pod(f"{NAME}-b", waiting=("CrashLoopBackOff", ""), last=crashed(GPU_OOM)),
        pod(f"{NAME}-a", waiting=("ImagePullBackOff", "")),
    ]
    assert "(2 of 2 pods failing)" in status_of(deployment(), pods).conditions[0].message


def test_invalid_spec_is_failed() -> None:
    error = SpecError("spec.resources.gpus", "must be >= 0 (got -1)")
    status = status_of(None, [], spec=None, error=error)
    assert status.phase == "Failed"
    ready, progressing, degraded = status.conditions
    assert (ready.status, progressing.status, degraded.status) == ("False", "False", "True")
    assert ready.reason == degraded.reason == "InvalidSpec"
    assert "spec.resources.gpus: must be >= 0" in ready.message
    assert status.observed_generation == 3


def test_scaled_to_zero() -> None:
    spec = SPEC.model_copy(update={"replicas": 0})
    status = status_of(deployment(replicas=0, want=0), [], spec=spec)
    assert (status.phase, status.conditions[0].reason) == ("Ready", "ScaledToZero")
    assert status.ready == "0/0"
    going = status_of(deployment(replicas=1, want=0), [pod(f"{NAME}-0", ready=True)], spec=spec)
    assert (going.phase, going.conditions[0].reason) == ("Progressing", "RollingOut")


def test_counts_selector_and_endpoints() -> None:
    pods = [pod(f"{NAME}-b", ip="10.0.0.2"), pod(f"{NAME}-a", ready=True, ip="10.0.0.1")]
    pods.append(pod(f"{NAME}-c", phase="Pending", unschedulable="no GPUs"))
    status = status_of(deployment(replicas=3, ready=1), pods)
    assert (status.replicas, status.ready_replicas, status.ready) == (3, 1, "1/2")
    assert status.selector == "llmsvc.io/inference-service=qwen3-32b"
    assert status.observed_generation == 3
    assert [e.model_dump() for e in status.endpoints] == [
        {"pod": f"{NAME}-a", "ip": "10.0.0.1", "ready": True},
        {"pod": f"{NAME}-b", "ip": "10.0.0.2", "ready": False},
        {"pod": f"{NAME}-c", "ip": "", "ready": False},
    ]


def test_last_transition_time_changes_only_with_status() -> None:
    first = status_of(deployment(ready=1), ready_pods(1))  # Progressing
    later = T0 + timedelta(minutes=5)
    # Still progressing, different message: all three keep their times.
    second = status_of(deployment(ready=0), [], previous=first, now=later)
    assert [c.last_transition_time for c in second.conditions] == [rfc3339(T0)] * 3
    # Ready: Ready and Progressing flip (new time), Degraded stays False (old time).
    third = status_of(deployment(ready=2), ready_pods(2), previous=second, now=later)
    times = {c.type: c.last_transition_time for c in third.conditions}
    assert times == {
        "Ready": rfc3339(later),
        "Progressing": rfc3339(later),
        "Degraded": rfc3339(T0),
    }


def test_status_round_trips_through_the_api_shape() -> None:
    status = status_of(deployment(ready=2), ready_pods(2))
    body = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert body["readyReplicas"] == 2
    assert body["conditions"][0]["lastTransitionTime"] == "2026-11-22T12:00:00Z"
    # Unknown fields (kopf's own, say) in a stored status do not break reading it back.
    again = InferenceServiceStatus.model_validate({**body, "kopf": {"progress": {}}})
    assert again == status


def test_every_babysitter_failure_reason_is_recognised() -> None:
    """The termination messages the babysitter really writes, for every failure reason."""
    failures = set(Reason) - {Reason.REQUESTED, Reason.SWAPPED, Reason.STOPPED, Reason.STANDBY}
    for reason in failures:
        record = ExitRecord(code=1, signal=None, reason=reason, detail="what happened")
        written = termination.message(record, "giving up after 5 restarts") + "\n"
        failing = pod("p", waiting=("CrashLoopBackOff", ""), last=crashed(written))
        problem = pod_problem(failing)
        assert problem is not None and problem.reason == str(reason)
        assert "pod p" in problem.message and "what happened" in problem.message


def test_running_pods_have_no_problem() -> None:
    assert pod_problem(pod("p", ready=True)) is None
    assert pod_problem(pod("p")) is None  # starting
    deleting = pod("p", waiting=("CrashLoopBackOff", ""), last=crashed(GPU_OOM))
    deleting["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    assert pod_problem(deleting) is None


def test_long_termination_messages_are_cut() -> None:
    failing = pod("p", waiting=("CrashLoopBackOff", ""), last=crashed("CUDAError: " + "x" * 5000))
    problem = pod_problem(failing)
    assert problem is not None and len(problem.message) < 500


# -- autoscaled services: "desired" is the Deployment's, the autoscaler's fields kept ---------

AUTOSCALED = parse_spec(
    {
        "model": {"name": "Qwen3-32B", "uri": "hf://Qwen/Qwen3-32B"},
        "engine": {"type": "vllm"},
        "replicas": 2,
        "autoscaling": {"minReplicas": 0},
    }
)
SCALER_FIELDS = {
    "desired_replicas": 3,
    "last_scale_time": "2026-11-22T11:59:00Z",
    "last_cold_start_seconds": 41.5,
}


def test_an_autoscaler_at_zero_is_scaled_to_zero_whatever_spec_replicas_says() -> None:
    assert AUTOSCALED.replicas == 2 and AUTOSCALED.autoscaling is not None
    status = status_of(deployment(replicas=0, want=0), [], spec=AUTOSCALED)
    ready = status.conditions[0]
    assert (status.phase, ready.reason) == ("Ready", "ScaledToZero")
    assert "the first request scales it up" in ready.message and "minReplicas 0" in ready.message
    assert status.ready == "0/0"
    # The same Deployment, not autoscaled: spec.replicas 2 is wanted, it is not Ready.
    fixed = status_of(deployment(replicas=0, want=0), [], spec=SPEC)
    assert (fixed.phase, fixed.ready) == ("Progressing", "0/2")


def test_an_autoscaled_service_counts_against_the_deployments_replicas() -> None:
    scaling_up = status_of(deployment(replicas=3, ready=2, want=3), ready_pods(2), spec=AUTOSCALED)
    assert (scaling_up.phase, scaling_up.ready) == ("Progressing", "2/3")
    assert scaling_up.conditions[0].reason == "RollingOut"
    scaled = status_of(deployment(replicas=3, ready=3, want=3), ready_pods(3), spec=AUTOSCALED)
    assert (scaled.phase, scaled.ready) == ("Ready", "3/3")
    assert scaled.conditions[0].reason == "MinimumReplicasAvailable"
    assert status_of(None, [], spec=AUTOSCALED).ready == "0/2"  # the initial size (0..4)


def test_the_autoscalers_fields_are_kept_while_autoscaled() -> None:
    previous = status_of(deployment(ready=2), ready_pods(2)).model_copy(update=SCALER_FIELDS)
    kept = status_of(deployment(ready=2), ready_pods(2), spec=AUTOSCALED, previous=previous)
    assert {key: getattr(kept, key) for key in SCALER_FIELDS} == SCALER_FIELDS
    broken = SpecError("spec.resources.gpus", "must be >= 0 (got -1)")
    failed = status_of(None, [], spec=None, error=broken, previous=previous)
    assert failed.desired_replicas == 3  # an invalid spec changes nothing
    removed = status_of(deployment(ready=2), ready_pods(2), spec=SPEC, previous=previous)
    assert all(getattr(removed, key) is None for key in SCALER_FIELDS)


def test_conditions_of_other_types_are_kept_as_they_are() -> None:
    theirs = Condition(
        type="AutoscalerDemand",
        status="False",
        reason="RouterUnreachable",
        message="router 10.0.0.9 skipped",
        last_transition_time="2026-11-22T11:00:00Z",
    )
    first = status_of(deployment(ready=2), ready_pods(2), spec=AUTOSCALED)
    previous = first.model_copy(update={"conditions": [*first.conditions, theirs]})
    again = status_of(deployment(ready=2), ready_pods(2), spec=AUTOSCALED, previous=previous)
    assert [c.type for c in again.conditions] == ["Ready", "Progressing", "Degraded", theirs.type]
    assert again.conditions[-1] == theirs


def test_a_refresh_of_what_the_autoscaler_wrote_patches_nothing() -> None:
    """The status as stored after the autoscaler's merge patch: recomputing it is a no-op."""
    first = status_of(deployment(ready=2), ready_pods(2), spec=AUTOSCALED)
    stored = {
        **status_body(first),
        "desiredReplicas": 2,
        "lastScaleTime": "2026-11-22T11:59:00Z",
        "lastColdStartSeconds": 41.5,
        "kopf": {"progress": {}},  # another writer's key, not the operator's
    }
    previous = InferenceServiceStatus.model_validate(stored)
    again = status_of(deployment(ready=2), ready_pods(2), spec=AUTOSCALED, previous=previous)
    assert status_patch(status_body(again), stored) is None
    # Autoscaling removed: the three fields are nulled (a merge patch removes them), kopf's stay.
    fixed = status_of(deployment(ready=2), ready_pods(2), spec=SPEC, previous=previous)
    change = status_patch(status_body(fixed), stored)
    assert change is not None
    assert {k: change[k] for k in ("desiredReplicas", "lastScaleTime", "lastColdStartSeconds")} == {
        "desiredReplicas": None,
        "lastScaleTime": None,
        "lastColdStartSeconds": None,
    }
    assert "kopf" not in change
    # A patch for another reason (a pod became ready) carries no value of the autoscaler's
    # fields: one read before would undo what the autoscaler wrote in between.
    more = status_of(deployment(ready=1), ready_pods(1), spec=AUTOSCALED, previous=previous)
    other = status_patch(status_body(more), stored)
    assert other is not None and other["readyReplicas"] == 1
    assert not {"desiredReplicas", "lastScaleTime", "lastColdStartSeconds"} & set(other)
    applied = {k: v for k, v in {**stored, **change}.items() if v is not None}
    assert status_patch(status_body(fixed), applied) is None
