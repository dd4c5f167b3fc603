"""A backend registered anew or healthy again leaves its passive-failure window at once."""

from __future__ import annotations

from llmsvc.core.records import ServiceRecord
from llmsvc.router.backends import Backend, BackendPool, PassiveHealth
from llmsvc.router.balancing import SmoothWeightedRoundRobin
from llmsvc.router.candidates import Eligible


def record(**changes: object) -> ServiceRecord:
    base: dict[str, object] = {
        "name": "e",
        "host": "127.0.0.1",
        "port": 1,
        "registered_at": 1.0,
        "metadata": {"models": ["m"]},
    }
    return ServiceRecord.model_validate({**base, **changes})


def failed_backend() -> Backend:
    backend = Backend(
        record=record(), source="registry", passive=PassiveHealth(max_fails=1, fail_timeout=30)
    )
    assert backend.passive.record_failure(now=100)
    assert not backend.healthy(now=101)
    return backend


def test_reregistration_clears_passive_failures() -> None:
    backend = failed_backend()
    backend.refresh(record(registered_at=2.0), "registry")
    assert backend.healthy(now=101)


def test_unhealthy_to_healthy_clears_passive_failures() -> None:
    backend = failed_backend()
    backend.refresh(record(status="unhealthy"), "registry")
    assert not backend.healthy(now=101)
    backend.refresh(record(status="healthy"), "registry")
    assert backend.healthy(now=101)


def test_an_unchanged_record_keeps_the_backend_out() -> None:
    backend = failed_backend()
    backend.refresh(record(), "registry")
    assert not backend.healthy(now=101)
    assert backend.healthy(now=131)


# --- the per-request cost does not grow with the number of backends -------------------------


class CountingPeer:
    """A peer that counts how often a strategy reads its weight (a scan reads every one)."""

    reads = 0

    def __init__(self, name: str, weight: int = 1) -> None:
        self.name, self._weight, self.in_flight, self.load = name, weight, 0, None

    @property
    def weight(self) -> int:
        CountingPeer.reads += 1
        return self._weight


def test_round_robin_walks_a_schedule_for_a_stable_list() -> None:
    peers = Eligible([CountingPeer(f"b{i}") for i in range(1000)], version=1)
    rr = SmoothWeightedRoundRobin()
    CountingPeer.reads = 0
    picks = [rr.pick("m", peers).name]  # the schedule is built once for this list
    assert CountingPeer.reads <= 2 * len(peers)  # building it is linear, not quadratic
    CountingPeer.reads = 0
    picks += [rr.pick("m", peers).name for _ in range(2000)]
    assert CountingPeer.reads == 0  # no scan per request
    assert picks[:4] == ["b0", "b1", "b2", "b3"]
    assert picks[1000:1004] == ["b0", "b1", "b2", "b3"]  # strict turns across the cycle


def test_the_schedule_gives_the_same_sequence_as_the_scan() -> None:
    weights = {"a": 5, "b": 1, "c": 1}
    peers = Eligible([CountingPeer(n, w) for n, w in weights.items()], version=1)
    scheduled = SmoothWeightedRoundRobin()
    stable = [scheduled.pick("m", peers).name for _ in range(21)]
    assert stable == list("aabacaa") * 3


def test_turns_go_on_across_a_new_list_and_a_retry() -> None:
    backends = [CountingPeer(n) for n in "abc"]
    rr = SmoothWeightedRoundRobin()
    peers = Eligible(backends, version=1)
    assert [rr.pick("m", peers).name for _ in range(2)] == ["a", "b"]
    # The same backends in a new version of the list (eligibility changed back): no repeat.
    assert [rr.pick("m", Eligible(backends, version=2)).name for _ in range(3)] == ["c", "a", "b"]
    peers = Eligible(backends, version=3)
    current = rr.pick("m", peers)  # the schedule of this version, after "b": "c"
    assert current.name == "c"
    # A retry without "b" (tried already) does not move the turns.
    assert rr.pick("m", peers, tried=[backends[1]]).name in {"a", "c"}
    assert [rr.pick("m", peers).name for _ in range(3)] == ["a", "b", "c"]


def rec(name: str) -> ServiceRecord:
    return ServiceRecord(name=name, host="127.0.0.1", port=1, metadata={"models": ["m"]})


def test_eligible_list_is_cached_until_health_changes() -> None:
    pool = BackendPool(max_fails=1, fail_timeout=10)
    pool.set_static([rec("a"), rec("b")])
    first = pool.eligible("m", now=0)
    assert pool.eligible("m", now=1) is first
    assert pool.eligible("m", now=1).version == first.version
    a = pool.get("a")
    assert a is not None
    a.active_ok = False
    pool.health_changed()
    assert [b.name for b in pool.eligible("m", now=1)] == ["b"]
    a.active_ok = True
    pool.health_changed()
    assert a.passive.record_failure(now=2)
    pool.health_changed()
    assert [b.name for b in pool.eligible("m", now=3)] == ["b"]
    # The passive take-out ends by itself after fail_timeout: the cache knows when.
    assert [b.name for b in pool.eligible("m", now=12)] == ["a", "b"]


def test_eligible_version_changes_with_the_list_only() -> None:
    pool = BackendPool(max_fails=1, fail_timeout=10)
    pool.set_static([rec("a"), rec("b")])
    first = pool.eligible("m", now=0)
    pool.health_changed()  # nothing changed for "m": its strategies keep their schedules
    assert pool.eligible("m", now=1).version == first.version
    pool.set_static([rec("a"), rec("b")])  # a refresh with the same records
    assert pool.eligible("m", now=1).version == first.version
    a = pool.get("a")
    assert a is not None
    a.active_ok = False
    pool.health_changed()
    out = pool.eligible("m", now=1)
    assert [b.name for b in out] == ["b"] and out.version != first.version
    a.active_ok = True
    pool.health_changed()
    back = pool.eligible("m", now=1)
    assert [b.name for b in back] == ["a", "b"] and back.version not in {first.version, out.version}
    heavier = ServiceRecord(
        name="b", host="127.0.0.1", port=1, weight=2, metadata={"models": ["m"]}
    )
    pool.set_static([rec("a"), heavier])  # same backends, a new weight: a new cycle
    assert pool.eligible("m", now=1).version != back.version
