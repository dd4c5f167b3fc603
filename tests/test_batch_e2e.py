"""The official ``openai`` client, through the router, runs a batch end to end.

Two simulated engines behind a router with two keyed tenants (``alice``, ``bob``),
``--batch-url`` and ``--batch-token``; ``llmsvc batch`` sends the lines back through the
router. Alice uploads 50 chat lines, creates a batch with OpenAI's ``24h`` window, polls
it to ``completed`` and downloads the output: every ``custom_id`` exactly once, each an
answer with usage. The batch object carries the ``llmsvc`` SLA extension; Bob gets
``NotFoundError`` for Alice's batch and files; the engines' answers were counted by the
router as Alice's at priority ``batch``. An embeddings batch runs too. On a third,
real-time engine (model ``slow``): a batch past its window ends ``expired`` with what
finished in the output and the rest (``batch_expired``) in the error file, and a running
batch cancelled ends ``cancelled`` likewise (``batch_cancelled``); every line in exactly
one of the two files. On a fourth engine that answers half its requests 500 (model
``flaky``), failed attempts are retried and each line ends once: answered, or in the
error file with its last 5xx answer.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import openai
import orjson
import pytest
from openai.types import Batch

import metrics
from batchstack import ADMIN_TOKEN, BatchStack, Engine, chat_lines, jsonl, start_batch_stack
from procs import ProcGroup, wait_until

pytestmark = pytest.mark.slow

LINES = 50
# Model "slow": 4 lines at once, 0.5 s each (10 tokens at 20 tokens/s), for the batches
# that must still be running when they expire or are cancelled.
SLOW = Engine(
    "e-slow",
    "slow",
    ("--time-scale", "1", "--max-num-seqs", "4", "--decode-slowdown", "0",
     "--decode-tokens-per-s", "20"),
)  # fmt: skip
# Model "flaky": its only engine answers half of the requests 500.
FLAKY = Engine("e-flaky", "flaky", ("--fail-rate", "0.5", "--seed", "15"))


def batch_requests(text: str, tenant: str) -> float:
    """The router's answered requests of ``tenant`` at priority batch (0 before the first)."""
    found = metrics.matching(
        text, "llmsvc_router_tenant_requests_total", tenant=tenant, priority="batch"
    )
    return sum(float(s.value) for s in found)


@pytest.fixture(scope="module")
def stack(module_spawn: ProcGroup, tmp_path_factory: pytest.TempPathFactory) -> BatchStack:
    return start_batch_stack(
        module_spawn,
        tmp_path_factory.mktemp("batch-e2e"),
        [Engine("e1"), Engine("e2"), SLOW, FLAKY],
        batch_flags=("--max-concurrency", "16"),
    )


def poll(client: openai.OpenAI, batch_id: str, *, timeout: float = 40) -> Batch:
    """Retrieve until the batch has ended (any final status); fails past ``timeout``."""
    deadline = time.monotonic() + timeout
    batch = client.batches.retrieve(batch_id)
    while batch.status in ("validating", "in_progress", "finalizing", "cancelling"):
        assert time.monotonic() < deadline, f"still {batch.status} after {timeout}s: {batch}"
        time.sleep(0.2)
        batch = client.batches.retrieve(batch_id)
    return batch


def extension(batch: Batch) -> dict[str, Any]:
    extra = batch.model_extra or {}
    assert "llmsvc" in extra, f"no llmsvc extension in {batch}"
    ext: dict[str, Any] = extra["llmsvc"]
    return ext


def test_openai_client_runs_a_chat_batch_through_the_router(stack: BatchStack) -> None:
    alice, bob = stack.client("alice"), stack.client("bob")
    content, ids = chat_lines(LINES)
    before = batch_requests(stack.router_metrics(), "alice")
    uploaded = alice.files.create(file=("input.jsonl", content), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(content)
    assert uploaded.purpose == "batch" and uploaded.filename == "input.jsonl"

    created = alice.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "e2e"},
    )
    assert created.id.startswith("batch_") and created.status in ("validating", "in_progress")
    assert created.request_counts is not None and created.request_counts.total == LINES
    assert created.metadata == {"job": "e2e"}
    ext = extension(created)
    assert ext["sla_status"] == "on_track" and ext["priority"] == "batch"
    assert ext["tenant"] == "alice"
    assert ext["deadline"] == created.expires_at
    assert abs(ext["deadline"] - (created.created_at + 24 * 3600)) <= 1
    for key in ("progress", "throughput", "eta", "eta_seconds", "time_left_seconds"):
        assert key in ext, key

    done = poll(alice, created.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (LINES, LINES)
    assert done.request_counts.failed == 0 and done.error_file_id is None
    assert done.completed_at is not None and done.in_progress_at is not None
    assert done.output_file_id is not None
    ext = extension(done)
    assert ext["progress"] == 1.0 and ext["sla_status"] == "on_track"

    output = jsonl(alice.files.content(done.output_file_id).read())
    seen = Counter(line["custom_id"] for line in output)
    assert sorted(seen) == ids, "a custom_id is missing or unknown"
    assert [k for k, n in seen.items() if n > 1] == [], "a custom_id is in the output twice"
    assert len({line["id"] for line in output}) == LINES
    tokens = 0
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200, line
        index = ids.index(line["custom_id"])
        assert response["request_id"] == f"{created.id}-{index}", line  # the runner's id
        body = response["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, line
        tokens += usage["total_tokens"]
    assert done.usage is not None and done.usage.total_tokens == tokens
    info = alice.files.retrieve(done.output_file_id)
    assert info.purpose == "batch_output"

    # Bob sees none of it, not even that it exists; his list is empty.
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(created.id)
    assert created.id not in [b.id for b in bob.batches.list().data]
    assert created.id in [b.id for b in alice.batches.list().data]
    # The router's admin token sees every tenant's batches.
    admin = openai.OpenAI(base_url=f"{stack.router}/v1", api_key=ADMIN_TOKEN, max_retries=0)
    assert admin.batches.retrieve(created.id).id == created.id

    # The lines reached the engines as Alice's, at priority batch (at least once each).
    text = stack.router_metrics()
    assert batch_requests(text, "alice") - before >= LINES, text
    assert batch_requests(text, "bob") == 0


def test_an_embeddings_batch(stack: BatchStack) -> None:
    alice = stack.client("alice")
    lines = [
        {
            "custom_id": f"emb-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "m", "input": f"text {i}"},
        }
        for i in range(5)
    ]
    content = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    uploaded = alice.files.create(file=("emb.jsonl", content), purpose="batch")
    created = alice.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = poll(alice, created.id)
    assert done.status == "completed", done
    assert done.output_file_id is not None
    output = jsonl(alice.files.content(done.output_file_id).read())
    assert sorted(line["custom_id"] for line in output) == [f"emb-{i}" for i in range(5)]
    for line in output:
        body = line["response"]["body"]
        assert body["object"] == "list" and body["data"][0]["embedding"], line


def test_cancel_a_finished_batch_and_an_unknown_file(stack: BatchStack) -> None:
    alice = stack.client("alice", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        alice.batches.create(
            input_file_id="file-000000000000000000000000",
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
    content, _ = chat_lines(2)
    uploaded = alice.files.create(file=("two.jsonl", content), purpose="batch")
    created = alice.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert poll(alice, created.id).status == "completed"
    with pytest.raises(openai.ConflictError) as info:
        alice.batches.cancel(created.id)
    assert info.value.code == "batch_not_cancellable"


def ended_lines(client: openai.OpenAI, batch: Batch) -> tuple[list[str], dict[str, str]]:
    """The custom_ids of the output file, and custom_id -> error code of the error file."""
    done = jsonl(client.files.content(batch.output_file_id).read()) if batch.output_file_id else []
    failed = jsonl(client.files.content(batch.error_file_id).read()) if batch.error_file_id else []
    for line in done:
        assert line["response"]["status_code"] == 200 and line["error"] is None, line
    for line in failed:
        assert line["response"] is None, line
    return [line["custom_id"] for line in done], {
        line["custom_id"]: line["error"]["code"] for line in failed
    }


def slow_batch(client: openai.OpenAI, lines: int, window: str) -> tuple[Batch, list[str]]:
    content, ids = chat_lines(lines, model="slow", max_tokens=10)
    uploaded = client.files.create(file=("slow.jsonl", content), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]  # the client types only "24h"
    )
    return created, ids


def test_a_batch_past_its_window_expires_with_what_finished(stack: BatchStack) -> None:
    alice = stack.client("alice")
    created, ids = slow_batch(alice, 80, "3s")  # about 10 s of work
    batch = poll(alice, created.id, timeout=45)
    assert batch.status == "expired", batch
    assert batch.expired_at is not None and batch.expired_at >= created.created_at + 3
    completed, failed = ended_lines(alice, batch)
    assert completed, "nothing finished before the deadline"
    assert failed and set(failed.values()) == {"batch_expired"}, failed
    assert sorted(completed + list(failed)) == ids, "a line is missing or in both files"
    counts = batch.request_counts
    assert counts is not None
    assert (counts.completed, counts.failed) == (len(completed), len(failed))
    assert extension(batch)["sla_status"] == "violated"


def test_cancel_a_running_batch(stack: BatchStack) -> None:
    alice = stack.client("alice")
    created, ids = slow_batch(alice, 80, "24h")

    def started() -> bool:
        counts = alice.batches.retrieve(created.id).request_counts
        return counts is not None and counts.completed > 0

    wait_until(started, timeout=20, what="a first completed line")
    cancelling = alice.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled"), cancelling
    assert cancelling.cancelling_at is not None
    batch = poll(alice, created.id, timeout=45)
    assert batch.status == "cancelled" and batch.cancelled_at is not None, batch
    completed, failed = ended_lines(alice, batch)
    assert completed and failed and set(failed.values()) == {"batch_cancelled"}, failed
    assert sorted(completed + list(failed)) == ids, "a line is missing or in both files"


def test_failed_attempts_are_retried_and_each_line_ends_once(stack: BatchStack) -> None:
    alice = stack.client("alice")
    content, ids = chat_lines(40, model="flaky")
    uploaded = alice.files.create(file=("flaky.jsonl", content), purpose="batch")
    created = alice.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = poll(alice, created.id, timeout=45)
    assert batch.status == "completed", batch
    text = stack.batch_metrics()
    retried = metrics.value(text, "llmsvc_batch_lines_total", outcome="retried")
    assert retried >= 5, f"half the answers are 500s, yet {retried} retries"
    done = jsonl(alice.files.content(batch.output_file_id).read()) if batch.output_file_id else []
    failed = jsonl(alice.files.content(batch.error_file_id).read()) if batch.error_file_id else []
    for line in done:
        assert line["response"]["status_code"] == 200, line
    for line in failed:  # failed --max-attempts times: the last answer, an error
        assert line["response"]["status_code"] >= 500, line
        assert line["response"]["body"]["error"]["message"], line
    assert sorted(line["custom_id"] for line in done + failed) == ids
    counts = batch.request_counts
    assert counts is not None and (counts.completed, counts.failed) == (len(done), len(failed))
    print(f"{len(done)} completed, {len(failed)} failed, {retried:.0f} retries")
