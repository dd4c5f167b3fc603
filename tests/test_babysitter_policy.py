"""What the supervisor decides after a life, without processes: the restart policy and a
model swap's course (kept, rolled back, failed)."""

from __future__ import annotations

from llmsvc.babysitter.engines import EngineSpec
from llmsvc.babysitter.lifecycle import ExitRecord, Reason, RestartPolicy, State
from llmsvc.babysitter.swap import Served, Swap


def _served(model: str) -> Served:
    return Served(model, model, (), EngineSpec(argv=("engine", "--model", model)))


def _failure(reason: Reason = Reason.EXITED) -> ExitRecord:
    return ExitRecord(1, None, reason, "it broke")


def test_restart_policy_backs_off_then_calls_a_crash_loop() -> None:
    policy = RestartPolicy(limit=2, window=600.0, backoff=1.0, stable_uptime=30.0)
    first, second = policy.verdict(_failure()), policy.verdict(_failure())
    assert (first.state, second.state) == (State.RESTARTING, State.RESTARTING)
    assert 0.8 <= first.delay <= 1.2 and 1.6 <= second.delay <= 2.4  # base·2ⁿ⁻¹ ± 20%
    third = policy.verdict(_failure())
    assert (third.state, third.why) == (State.CRASH_LOOP, "crash loop: 3 failures in a row")
    policy.reset()  # POST /restart
    assert (policy.failures, policy.verdict(_failure()).state) == (0, State.RESTARTING)


def test_restart_policy_gives_up_at_once_on_what_a_restart_cannot_mend() -> None:
    policy = RestartPolicy(limit=5, window=600.0, backoff=1.0, stable_uptime=30.0)
    verdict = policy.verdict(_failure(Reason.BAD_ARGUMENTS))
    assert (verdict.state, verdict.why) == (State.FAILED, "the engine cannot start")


def test_restart_policy_forgets_failures_after_a_stable_life() -> None:
    policy = RestartPolicy(limit=5, window=600.0, backoff=1.0, stable_uptime=30.0)
    policy.verdict(_failure())
    policy.ended(29.0)
    policy.ended(None)  # never ready
    assert policy.failures == 1
    policy.ended(30.0)
    assert policy.failures == 0


def test_swap_kept_once_the_new_model_is_ready() -> None:
    swap, a, b = Swap(), _served("a"), _served("b")
    assert (swap.record, swap.in_progress, swap.take_staged()) == (None, False, None)
    swap.begin(a, b, rollback=True)
    assert swap.in_progress and swap.take_staged() is None  # draining: nothing staged yet
    swap.stage(a, b)
    assert swap.take_staged() == b
    assert swap.take_staged() is None  # launched once
    swap.passed()
    assert swap.record is not None
    assert (swap.record.state, swap.in_progress) == ("done", False)
    assert swap.record.finished_at is not None
    assert not swap.failed(_failure())  # a later failure is the restart policy's


def test_swap_rolls_back_when_the_new_model_fails() -> None:
    swap, a, b = Swap(), _served("a"), _served("b")
    swap.begin(a, b, rollback=True)
    swap.stage(a, b)
    swap.take_staged()
    assert swap.failed(_failure(Reason.BAD_ARGUMENTS))
    assert swap.record is not None
    assert swap.record.as_json() | {"started_at": 0, "finished_at": 0} == {
        "from_model": "a", "to_model": "b", "rollback": True, "state": "rolled-back",
        "reason": "BadArguments", "detail": "BadArguments: it broke",
        "started_at": 0, "finished_at": 0,
    }  # fmt: skip
    assert swap.take_staged() == a  # the previous model, not on trial
    assert not swap.failed(_failure())


def test_swap_without_rollback_fails_and_leaves_it_to_the_restart_policy() -> None:
    swap, a, b = Swap(), _served("a"), _served("b")
    swap.begin(a, b, rollback=False)
    swap.stage(a, b)
    swap.take_staged()
    assert not swap.failed(_failure(Reason.CUDA_ERROR))
    assert swap.record is not None
    assert (swap.record.state, swap.record.reason) == ("failed", "CUDAError")
    assert swap.take_staged() is None
