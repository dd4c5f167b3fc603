"""A held request's "about N s": what its records say about the engine coming up.

Pure, with an injected wall clock: a babysitter starting its engine (its last start
minus the time this one has run), waking one from standby (its last wake, else its
last start, minus the time the wake has run), in standby (a whole wake), and on
Kubernetes an InferenceService scaling from zero (the operator's cold-start and
scaling-since annotations, as the registry's ``inference-service`` record carries them).
"""

from __future__ import annotations

from typing import Any

import pytest

from llmsvc.core.records import BABYSITTER, INFERENCE_SERVICE, ServiceRecord
from llmsvc.router.backends import BackendPool
from llmsvc.router.demand import DemandCounter
from llmsvc.router.hold import Holds, service_estimate, sitter_estimate

NOW = 1_800_000_000.0


def sitter(name: str, **metadata: Any) -> ServiceRecord:
    return ServiceRecord(
        name=name,
        host="127.0.0.1",
        port=9,
        type=BABYSITTER,
        metadata={"model_name": "m"} | metadata,
    )


def service(**metadata: Any) -> ServiceRecord:
    return ServiceRecord(
        name="ns.m",
        host="m.ns.svc",
        port=80,
        type=INFERENCE_SERVICE,
        metadata={"models": ["m"]} | metadata,
    )


def holds_over(*records: ServiceRecord) -> Holds:
    pool = BackendPool(max_fails=1, fail_timeout=10)
    pool.set_registry(records)
    return Holds(pool, DemandCounter(), wall=lambda: NOW)


def test_a_waking_sitter_counts_down_its_last_wake() -> None:
    waking = {"state": "waking", "wake_seconds": 4.0, "startup_seconds": 40.0}
    assert sitter_estimate(waking | {"starting_since": NOW - 1.5}, NOW) == (True, 2.5)
    assert sitter_estimate(waking | {"starting_since": NOW - 9}, NOW) == (True, 1.0)  # >= 1
    # The first wake: nothing measured yet but the last full start.
    first = {"state": "waking", "startup_seconds": 40.0, "starting_since": NOW - 10}
    assert sitter_estimate(first, NOW) == (True, 30.0)


def test_a_standby_sitter_is_a_whole_wake_not_yet_under_way() -> None:
    assert sitter_estimate({"state": "standby", "wake_seconds": 3.0}, NOW) == (False, 3.0)
    stopped = {"state": "standby", "wake_seconds": None, "startup_seconds": 12.0}
    assert sitter_estimate(stopped, NOW) == (False, 12.0)  # --standby stop: a full start
    assert sitter_estimate({"state": "standby"}, NOW) is None  # nothing ever measured


def test_a_starting_sitter_is_as_before() -> None:
    starting = {"state": "starting", "startup_seconds": 40.0, "starting_since": NOW - 10}
    assert sitter_estimate(starting, NOW) == (True, 30.0)
    assert sitter_estimate({"state": "starting", "startup_seconds": 40.0}, NOW) is None
    ready = {"state": "ready", "startup_seconds": 40.0, "starting_since": None}
    assert sitter_estimate(ready, NOW) is None


def test_an_inference_service_scaling_from_zero() -> None:
    assert service_estimate({"startup_seconds": 90, "starting_since": NOW - 30}, NOW) == (
        True,
        60.0,
    )
    assert service_estimate({"startup_seconds": 90}, NOW) == (False, 90.0)  # not scaling yet
    assert service_estimate({"starting_since": NOW - 30}, NOW) is None  # never measured
    assert service_estimate({"startup_seconds": "90"}, NOW) is None  # not a number


def test_holds_take_the_soonest_under_way_before_any_standby_one() -> None:
    holds = holds_over(
        sitter("a", state="standby", wake_seconds=2.0),  # would be quicker, but nobody woke it
        sitter("b", state="waking", wake_seconds=8.0, starting_since=NOW - 3),
        sitter("c", state="starting", startup_seconds=30.0, starting_since=NOW - 5),
    )
    assert holds.estimate("m") == pytest.approx(5.0)
    assert holds_over(sitter("a", state="standby", wake_seconds=2.0)).estimate("m") == 2.0
    assert holds_over(sitter("a", state="standby")).estimate("m") is None
    assert holds.estimate("other") is None


def test_holds_read_the_inference_service_record() -> None:
    holds = holds_over(service(startup_seconds=120.0, starting_since=NOW - 20))
    assert holds.estimate("m") == pytest.approx(100.0)
    assert holds_over(service(startup_seconds=120.0)).estimate("m") == pytest.approx(120.0)
    assert holds_over(service()).estimate("m") is None
