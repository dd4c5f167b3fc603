"""SIGKILL the batch service during a 2,000-line batch, several times: nothing is lost.

Two simulated engines in real time (0.4 s a line) behind the router; ``llmsvc batch``
with 64 lines in flight. While the batch runs, the batch process is SIGKILLed at moments
drawn from a seeded random generator (each once a drawn share of the lines has
completed, plus a drawn delay, so every kill lands while lines are in flight) and
started again on the same ``--data-dir``. The batch then completes: the output file has
every ``custom_id`` exactly once (duplicates are counted, not collapsed), no line is
missing or failed, and ``request_counts`` agree with the file. The engines may have
answered a line twice (at least once to the engines: the router counts at least 2,000
answers of the owner at priority batch); the output may not.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

import metrics
from batchstack import (
    BATCH_TOKEN,
    BatchStack,
    Engine,
    chat_lines,
    jsonl,
    start_batch_stack,
    wait_status,
)
from procs import Spawn

pytestmark = pytest.mark.slow

LINES = 2000
KILLS = 4
SEED = 15
TIMEOUT_S = 120  # the whole batch, kills and restarts included
# Engines in real time: a 16-token line takes 0.4 s, 32 at once each, so that the batch
# takes some 15 s without the kills (at --time-scale 0 it would be over in two).
REALTIME = ("--time-scale", "1", "--decode-slowdown", "0", "--decode-tokens-per-s", "40")


def create_batch(stack: BatchStack, content: bytes) -> str:
    """Upload and create through the router as tenant alice; the batch id."""
    client = stack.client("alice")
    uploaded = client.files.create(file=("big.jsonl", content), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return created.id


def completed(stack: BatchStack, batch_id: str) -> tuple[str, int]:
    """(status, completed lines), or ("", -1) while the service does not answer."""
    try:
        obj = stack.batch_object(batch_id)
    except (httpx.HTTPError, AssertionError):
        return "", -1
    return obj["status"], int(obj["request_counts"]["completed"])


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    spawn: Spawn, tmp_path: Path
) -> None:
    stack = start_batch_stack(
        spawn,
        tmp_path,
        [Engine("e1", args=REALTIME), Engine("e2", args=REALTIME)],
        batch_flags=("--max-concurrency", "64", "--initial-concurrency", "64"),
    )
    content, ids = chat_lines(LINES, max_tokens=16)
    batch_id = create_batch(stack, content)
    rng = random.Random(SEED)
    # Each kill once this many lines have completed (increasing), then a random delay.
    thresholds = sorted(rng.sample(range(LINES // 20, LINES * 9 // 10), KILLS))
    started = time.monotonic()
    kills: list[tuple[int, str]] = []  # (completed at the kill, status)
    for threshold in thresholds:
        while True:
            assert time.monotonic() - started < TIMEOUT_S, f"timed out before kill {len(kills)}"
            status, done = completed(stack, batch_id)
            if status not in ("", "in_progress"):
                break  # ended already: the remaining kills land after
            if done >= threshold:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.3))
        status, done = completed(stack, batch_id)
        proc = stack.batch_proc
        proc.signal(signal.SIGKILL)
        assert proc.popen.wait(10) == -signal.SIGKILL
        kills.append((done, status))
        stack.restart_batch()
    mid_run = [k for k in kills if k[1] == "in_progress" and 0 < k[0] < LINES]
    assert len(mid_run) >= KILLS - 1, f"the kills did not land mid-batch: {kills}"

    left = TIMEOUT_S - (time.monotonic() - started)
    final = wait_status(
        stack, batch_id, ["completed", "failed", "expired", "cancelled"], timeout=left
    )
    assert final["status"] == "completed", final
    counts = final["request_counts"]
    assert counts == {"total": LINES, "completed": LINES, "failed": 0}, counts
    assert final["error_file_id"] is None, "lines failed"

    resp = httpx.get(
        f"{stack.batch}/v1/files/{final['output_file_id']}/content",
        headers={"Authorization": f"Bearer {BATCH_TOKEN}", "X-Llmsvc-Tenant": "alice"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    output = jsonl(resp.content)
    seen = Counter(line["custom_id"] for line in output)
    duplicated = {k: n for k, n in seen.items() if n > 1}
    missing = sorted(set(ids) - set(seen))
    unknown = sorted(set(seen) - set(ids))
    assert not duplicated, f"{len(duplicated)} custom_ids more than once: {list(duplicated)[:5]}"
    assert not missing, f"{len(missing)} custom_ids missing: {missing[:5]}"
    assert not unknown, unknown
    assert len(output) == LINES
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert [line["custom_id"] for line in output] == ids, "the output is not in input order"
    # At least once to the engines: the router answered every line as alice's at priority
    # batch (lines in flight at a kill were sent again, so maybe more).
    sent = metrics.value(
        stack.router_metrics(), "llmsvc_router_tenant_requests_total", tenant="alice",
        priority="batch",
    )  # fmt: skip
    assert sent >= LINES, sent
    took = time.monotonic() - started
    print(f"kills at (completed, status): {kills}; {sent:.0f} sent; {took:.1f} s")
