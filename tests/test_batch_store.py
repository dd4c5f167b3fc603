"""The SQLite store: every call a transaction, counts kept with the lines, nothing lost
to a SIGKILL.

Fast unit tests on a store under ``tmp_path`` with explicit times (the store takes
``now`` from its caller), plus a crash test: a child process completes lines in a loop
and is SIGKILLed at a random moment, three times, on the same data directory.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmsvc.batch.settings import BatchSettings
from llmsvc.batch.sqlite_schema import SCHEMA_VERSION, SchemaTooNew
from llmsvc.batch.sqlite_store import SqliteStore, open_store
from llmsvc.batch.store import BatchRecord, Counts, LineSpec, Sample
from procs import Proc, Spawn, wait_until

URL = "/v1/chat/completions"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "data", clock=clock)
    yield s
    s.close()


def specs(n: int) -> list[LineSpec]:
    return [
        LineSpec(index=i, custom_id=f"req-{i}", method="POST", url=URL, body={"model": "m", "n": i})
        for i in range(n)
    ]


def record(
    batch_id: str, *, tenant: str | None = "alice", created_at: float = 100.0
) -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        tenant=tenant,
        endpoint=URL,
        input_file_id="file-in",
        completion_window="24h",
        window_seconds=86400.0,
        created_at=created_at,
        status="in_progress",
        model="m",
        metadata={"job": "nightly"},
        times={"in_progress_at": created_at},
    )


def output(index: int) -> dict[str, Any]:
    return {
        "id": f"batch_req_{index}",
        "custom_id": f"req-{index}",
        "response": {"status_code": 200, "request_id": f"b-{index}", "body": {"n": index}},
        "error": None,
    }


def states(path: Path, batch_id: str) -> dict[int, str]:
    """The lines' states read straight from the database file (not through the store)."""
    with sqlite3.connect(path / "batches.db") as db:
        rows = db.execute("SELECT idx, state FROM lines WHERE batch_id = ?", (batch_id,))
        return dict(rows.fetchall())


def counted(path: Path, batch_id: str) -> Counts:
    by_state = list(states(path, batch_id).values())
    return Counts(
        total=len(by_state),
        pending=by_state.count("pending"),
        running=by_state.count("running"),
        completed=by_state.count("completed"),
        failed=by_state.count("failed"),
    )


# files


def test_file_round_trip_and_delete(store: SqliteStore, clock: Clock) -> None:
    made = store.create_file(tenant="alice", purpose="batch", filename="in.jsonl", content=b"x\n")
    assert made.id.startswith("file-") and made.bytes == 2 and made.created_at == int(clock.now)
    assert store.get_file(made.id) == made
    assert store.file_content(made.id) == b"x\n"
    assert (store.files_dir / made.id).read_bytes() == b"x\n"
    assert store.delete_file(made.id) is True
    assert store.get_file(made.id) is None
    assert not (store.files_dir / made.id).exists()
    assert store.delete_file(made.id) is False
    with pytest.raises(KeyError):
        store.file_content(made.id)


def test_open_removes_temporary_leftovers(tmp_path: Path) -> None:
    SqliteStore(tmp_path).close()
    leftover = tmp_path / "files" / "file-abc.tmp"
    leftover.write_bytes(b"half")
    SqliteStore(tmp_path).close()
    assert not leftover.exists()


def test_list_files_by_tenant_purpose_and_pages(store: SqliteStore, clock: Clock) -> None:
    made = []
    for i in range(5):
        clock.now += 1 if i != 3 else 0  # two files in the same second: ties go by id
        owner = "alice" if i % 2 == 0 else "bob"
        purpose = "batch" if i < 4 else "batch_output"
        made.append(store.create_file(tenant=owner, purpose=purpose, filename=f"{i}", content=b""))
    made.append(store.create_file(tenant=None, purpose="batch", filename="admin", content=b""))

    def ids(**kw: Any) -> list[str]:
        args: dict[str, Any] = {"tenant": "alice", "all_tenants": False, "purpose": None}
        args.update(after=None, limit=20)
        args.update(kw)
        return [f.id for f in store.list_files(**args)]

    newest_first = sorted(made, key=lambda f: (f.created_at, f.id), reverse=True)
    alice = [f.id for f in newest_first if f.tenant == "alice"]
    assert ids() == alice
    assert ids(tenant="bob") == [f.id for f in newest_first if f.tenant == "bob"]
    assert ids(tenant=None) == [made[5].id]
    assert ids(all_tenants=True) == [f.id for f in newest_first]
    assert ids(purpose="batch_output") == [made[4].id]
    everyone = [f.id for f in newest_first]
    pages = [ids(all_tenants=True, limit=2)]
    while len(pages[-1]) == 2:
        pages.append(ids(all_tenants=True, limit=2, after=pages[-1][-1]))
    assert [i for page in pages for i in page] == everyone
    assert ids(after="file-unknown") == []


# batches


def test_batch_round_trip_and_reopen(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)
    batch = record("batch_a")
    batch.errors = None
    created = s.create_batch(batch, specs(3))
    assert created.counts == Counts(total=3, pending=3)
    got = s.get_batch("batch_a")
    assert got == created
    s.add_sample("batch_a", Sample(at=5.0, completed=1, failed=0, throughput=0.5, eta=9.0))
    s.add_sample("batch_a", Sample(at=4.0, completed=0, failed=0, throughput=None, eta=None))
    [line] = s.claim("batch_a", 1, now=200.0)
    assert s.complete("batch_a", line.index, output(0), now=201.0, usage={"input_tokens": 4})
    s.close()

    again = SqliteStore(tmp_path)
    reopened = again.get_batch("batch_a")
    assert reopened is not None
    assert reopened.counts == Counts(total=3, pending=2, completed=1)
    assert reopened.usage == {"input_tokens": 4}
    assert reopened.metadata == {"job": "nightly"} and reopened.times == {"in_progress_at": 100.0}
    assert [smp.at for smp in again.samples("batch_a")] == [4.0, 5.0]
    assert again.samples("batch_a")[1] == Sample(5.0, 1, 0, 0.5, 9.0)
    assert list(again.outputs("batch_a", "completed")) == [output(0)]
    stored = again.line("batch_a", 1)
    assert stored is not None and stored.body == {"model": "m", "n": 1}
    assert stored.custom_id == "req-1" and stored.url == URL and stored.state == "pending"
    again.close()


def test_a_failed_call_changes_nothing(store: SqliteStore) -> None:
    """A batch with a repeated line index is refused whole: no batch, no lines, and the
    store goes on working (the transaction was rolled back, not left open)."""
    lines = specs(3)
    lines[2].index = 1
    with pytest.raises(sqlite3.IntegrityError):
        store.create_batch(record("batch_bad"), lines)
    assert store.get_batch("batch_bad") is None
    assert store.claim("batch_bad", 10, now=1.0) == []
    assert store.create_batch(record("batch_good"), specs(2)).counts.total == 2


def test_schema_version_is_recorded_and_a_newer_database_refused(tmp_path: Path) -> None:
    SqliteStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "batches.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNew, match="newer"):
        SqliteStore(tmp_path)


def test_synchronous_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(tmp_path, synchronous="SOMETIMES")  # type: ignore[arg-type]
    SqliteStore(tmp_path, synchronous="FULL").close()


def test_open_store_uses_the_data_dir(tmp_path: Path) -> None:
    store = open_store(BatchSettings(data_dir=tmp_path / "d"))
    try:
        store.create_batch(record("batch_s"), specs(1))
        assert (tmp_path / "d" / "batches.db").exists()
        assert store.get_batch("batch_s") is not None
    finally:
        store.close()


def test_list_batches_by_tenant_and_pages(store: SqliteStore) -> None:
    for i, (owner, at) in enumerate([("alice", 1.0), ("bob", 2.0), ("alice", 3.0), ("alice", 3.0)]):
        store.create_batch(record(f"batch_{i}", tenant=owner, created_at=at), specs(1))

    def ids(**kw: Any) -> list[str]:
        args: dict[str, Any] = {"tenant": "alice", "all_tenants": False, "after": None}
        args.update(limit=20)
        args.update(kw)
        return [b.id for b in store.list_batches(**args)]

    assert ids() == ["batch_3", "batch_2", "batch_0"]
    assert ids(tenant="bob") == ["batch_1"]
    assert ids(tenant="carol") == []
    assert ids(all_tenants=True) == ["batch_3", "batch_2", "batch_1", "batch_0"]
    assert ids(limit=1) == ["batch_3"]
    assert ids(limit=1, after="batch_3") == ["batch_2"]
    assert ids(after="batch_2") == ["batch_0"]
    assert ids(after="batch_0") == []


def test_set_status_active_batches_and_raised(store: SqliteStore) -> None:
    for name in ("batch_a", "batch_b", "batch_c"):
        store.create_batch(record(name), specs(2))
    store.set_status("batch_b", "finalizing", at=300.0)
    store.set_status(
        "batch_c", "completed", at=310.0, output_file_id="file-out", error_file_id="file-err"
    )
    store.set_status("batch_a", "cancelling", at=320.0, errors=[{"code": "x", "line": 1}])
    store.set_raised("batch_b", True)
    assert [b.id for b in store.active_batches()] == ["batch_a", "batch_b"]
    c = store.get_batch("batch_c")
    assert c is not None and c.status == "completed"
    assert (c.output_file_id, c.error_file_id) == ("file-out", "file-err")
    assert c.times == {"in_progress_at": 100.0, "completed_at": 310.0}
    b = store.get_batch("batch_b")
    assert b is not None and b.raised and b.times["finalizing_at"] == 300.0
    a = store.get_batch("batch_a")
    assert a is not None and a.errors == [{"code": "x", "line": 1}]
    store.set_status("batch_b", "finalizing", at=301.0, raised=False)
    b = store.get_batch("batch_b")
    assert b is not None and not b.raised and b.times["finalizing_at"] == 301.0
    with pytest.raises(TypeError, match="counts"):
        store.set_status("batch_a", "cancelled", at=1.0, counts=None)
    with pytest.raises(ValueError, match="status"):
        store.set_status("batch_a", "done", at=1.0)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        store.set_status("batch_nope", "cancelled", at=1.0)


# lines


def test_claim_respects_not_before_and_never_hands_a_line_out_twice(store: SqliteStore) -> None:
    store.create_batch(record("batch_a"), specs(6))
    first = store.claim("batch_a", 2, now=10.0)
    assert [(line.index, line.state, line.attempts) for line in first] == [
        (0, "running", 1),
        (1, "running", 1),
    ]
    store.retry("batch_a", 0, not_before=50.0, error="503", counts_as_failure=True)
    store.retry("batch_a", 1, not_before=50.0, error="429", counts_as_failure=False)
    assert [line.index for line in store.claim("batch_a", 10, now=20.0)] == [2, 3, 4, 5]
    assert store.claim("batch_a", 10, now=49.9) == []
    again = store.claim("batch_a", 10, now=50.0)
    assert [(line.index, line.attempts, line.failures) for line in again] == [(0, 2, 1), (1, 2, 0)]
    assert again[0].last_error == "503"
    assert store.claim("batch_a", 10, now=1e12) == []
    assert store.claim("batch_a", 0, now=1e12) == []
    assert store.counts("batch_a") == Counts(total=6, running=6)


def test_claim_takes_the_lowest_index_of_its_batch_only(store: SqliteStore) -> None:
    store.create_batch(record("batch_a"), specs(3))
    store.create_batch(record("batch_b"), specs(300))
    assert [line.index for line in store.claim("batch_b", 3, now=1.0)] == [0, 1, 2]
    assert [line.index for line in store.claim("batch_b", 2, now=1.0)] == [3, 4]
    assert store.counts("batch_a") == Counts(total=3, pending=3)


def test_complete_or_fail_of_a_line_not_running_changes_nothing(
    store: SqliteStore, tmp_path: Path
) -> None:
    store.create_batch(record("batch_a"), specs(3))
    assert store.complete("batch_a", 0, output(0), now=1.0) is False  # pending
    assert store.fail("batch_a", 0, output(0), now=1.0, error="x") is False
    store.claim("batch_a", 2, now=1.0)
    assert store.complete("batch_a", 0, output(0), now=2.0, usage={"total_tokens": 5})
    assert store.fail("batch_a", 1, {"error": "first"}, now=2.0, error="boom")
    before = store.get_batch("batch_a")
    # duplicates: a second answer of an ended line is dropped
    assert store.complete("batch_a", 0, {"other": 1}, now=3.0, usage={"total_tokens": 9}) is False
    assert store.complete("batch_a", 1, {"other": 1}, now=3.0) is False
    assert store.fail("batch_a", 0, {"other": 1}, now=3.0, error="late") is False
    store.retry("batch_a", 0, not_before=0.0, error="late", counts_as_failure=True)
    assert store.complete("batch_a", 7, output(7), now=3.0) is False  # no such line
    assert store.get_batch("batch_a") == before
    done = store.line("batch_a", 0)
    assert done is not None and done.output == output(0) and done.finished_at == 2.0
    assert done.state == "completed" and done.failures == 0
    failed = store.line("batch_a", 1)
    assert failed is not None and failed.last_error == "boom"
    assert failed.output == {"error": "first"}
    assert counted(tmp_path / "data", "batch_a") == Counts(
        total=3, pending=1, completed=1, failed=1
    )


def test_usage_is_summed_over_completed_lines(store: SqliteStore) -> None:
    store.create_batch(record("batch_a"), specs(3))
    store.claim("batch_a", 3, now=1.0)
    store.complete("batch_a", 0, output(0), now=1.0, usage={"input_tokens": 2, "output_tokens": 3})
    store.complete("batch_a", 1, output(1), now=1.0, usage={"input_tokens": 5})
    store.complete("batch_a", 2, output(2), now=1.0)
    got = store.get_batch("batch_a")
    assert got is not None and got.usage == {"input_tokens": 7, "output_tokens": 3}


def test_recover_puts_running_lines_back(store: SqliteStore, tmp_path: Path) -> None:
    store.create_batch(record("batch_a"), specs(4))
    store.create_batch(record("batch_b"), specs(2))
    store.claim("batch_a", 3, now=1.0)
    store.claim("batch_b", 1, now=1.0)
    store.complete("batch_a", 1, output(1), now=2.0)
    assert store.recover() == 3
    assert store.recover() == 0
    assert store.counts("batch_a") == Counts(total=4, pending=3, completed=1)
    assert store.counts("batch_b") == Counts(total=2, pending=2)
    assert counted(tmp_path / "data", "batch_a") == store.counts("batch_a")
    assert [line.index for line in store.claim("batch_a", 5, now=3.0)] == [0, 2, 3]


def test_end_pending_fails_pending_lines_only(store: SqliteStore) -> None:
    store.create_batch(record("batch_a"), specs(5))
    store.claim("batch_a", 2, now=1.0)
    store.complete("batch_a", 0, output(0), now=2.0)
    ended = store.end_pending("batch_a", now=9.0, code="batch_expired", message="past deadline")
    assert ended == 3
    assert store.counts("batch_a") == Counts(total=5, running=1, completed=1, failed=3)
    errors = list(store.outputs("batch_a", "failed"))
    assert [e["custom_id"] for e in errors] == ["req-2", "req-3", "req-4"]
    for e in errors:
        assert e["id"].startswith("batch_req_") and e["response"] is None
        assert e["error"] == {"code": "batch_expired", "message": "past deadline"}
    assert len({e["id"] for e in errors}) == 3
    assert store.end_pending("batch_a", now=9.0, code="batch_expired", message="again") == 0
    assert store.complete("batch_a", 1, output(1), now=10.0)  # the running one still may


def test_outputs_are_in_index_order(store: SqliteStore) -> None:
    n = 2500  # more than one read chunk
    store.create_batch(record("batch_a"), specs(n))
    lines = store.claim("batch_a", n, now=1.0)
    random.Random(3).shuffle(lines)
    for line in lines:
        if line.index % 7 == 0:
            store.fail("batch_a", line.index, {"failed": line.index}, now=2.0, error="x")
        else:
            store.complete("batch_a", line.index, output(line.index), now=2.0)
    completed = [o["custom_id"] for o in store.outputs("batch_a", "completed")]
    assert completed == [f"req-{i}" for i in range(n) if i % 7]
    assert [o["failed"] for o in store.outputs("batch_a", "failed")] == list(range(0, n, 7))


def test_counts_agree_with_the_lines_through_random_operations(
    store: SqliteStore, tmp_path: Path
) -> None:
    rng = random.Random(15)
    store.create_batch(record("batch_a"), specs(200))
    for step in range(400):
        running = [i for i, s in states(tmp_path / "data", "batch_a").items() if s == "running"]
        op = rng.choice(["claim", "complete", "fail", "retry", "recover"])
        if op == "claim":
            store.claim("batch_a", rng.randint(1, 8), now=float(step))
        elif running and op in {"complete", "fail", "retry"}:
            index = rng.choice(running)
            if op == "complete":
                store.complete("batch_a", index, output(index), now=float(step))
            elif op == "fail":
                store.fail("batch_a", index, output(index), now=float(step), error="e")
            else:
                store.retry(
                    "batch_a", index, not_before=step + 2.0, error="e", counts_as_failure=True
                )
        elif op == "recover" and rng.random() < 0.1:
            store.recover()
        assert store.counts("batch_a") == counted(tmp_path / "data", "batch_a"), step


# crash

_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from llmsvc.batch.sqlite_store import SqliteStore
    from llmsvc.batch.store import BatchRecord, LineSpec

    store = SqliteStore(Path(sys.argv[1]))
    if store.get_batch("batch_crash") is None:
        n = int(sys.argv[2])
        lines = [LineSpec(i, f"req-{i}", "POST", "/v1/x", {"n": i}) for i in range(n)]
        store.create_batch(
            BatchRecord("batch_crash", "alice", "/v1/x", "file-in", "24h", 86400.0, 0.0,
                        "in_progress"),
            lines,
        )
    print("recovered", store.recover(), flush=True)
    while True:
        claimed = store.claim("batch_crash", 8, now=1.0)
        if not claimed:
            print("finished", flush=True)
            break
        for line in claimed:
            out = {"custom_id": line.custom_id, "body": {"n": line.index, "pad": "x" * 200}}
            assert store.complete("batch_crash", line.index, out, now=1.0)
            print("done", line.index, flush=True)
    """
)


def _reported(child: Proc) -> set[int]:
    """The lines the child has said (after complete() returned) are completed: whole lines
    only (unbuffered, print writes "done", " ", the index and the newline one by one)."""
    whole = child.log().split("\n")[:-1]
    return {int(w.split()[1]) for w in whole if w.startswith("done ")}


def test_sigkill_loses_no_completed_line(spawn: Spawn, tmp_path: Path) -> None:
    """Each round, a child completes lines and is SIGKILLed at a random moment; what it
    reported complete is complete with its output, and recover() finds the lines it held."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    data, total = tmp_path / "data", 100_000
    reported: set[int] = set()
    for round_ in range(3):
        args = (sys.executable, "-c", _CHILD, str(data), str(total))
        child = spawn(f"child{round_}", *args, raw=True)
        target = rng.randint(20, 600)
        wait_until(
            lambda: len(_reported(child)) >= target,  # noqa: B023 - called in this round only
            timeout=30,
            what=f"{target} lines completed (seed {seed})",
        )
        child.kill()  # at a random moment: the child goes on completing meanwhile
        reported |= _reported(child)

        store = SqliteStore(data)
        try:
            counts = store.counts("batch_crash")
            assert counts == counted(data, "batch_crash"), seed
            for index in reported:
                line = store.line("batch_crash", index)
                assert line is not None and line.state == "completed", (seed, index)
                assert line.output == {
                    "custom_id": f"req-{index}",
                    "body": {"n": index, "pad": "x" * 200},
                }, seed
            assert store.recover() == counts.running, seed
            assert store.counts("batch_crash").running == 0
            assert counted(data, "batch_crash") == store.counts("batch_crash")
        finally:
            store.close()
