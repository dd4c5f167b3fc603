"""Unit tests of the pure timing model, the embeddings and the metric buckets."""

from __future__ import annotations

import base64
import math
import random
import struct

import pytest

from llmsvc.simengine.embeddings import embed, encode_base64, split_inputs
from llmsvc.simengine.metrics import one_two_five_buckets
from llmsvc.simengine.model import (
    VOCABULARY,
    Z95,
    KvBudget,
    PrefixCache,
    StepPlan,
    block_hashes,
    cached_tokens,
    count_tokens,
    decode_seconds,
    describe_prompt,
    jitter_factor,
    output_tokens,
    plan_step,
    prefill_seconds,
    step_noise_factor,
    step_seconds,
)


@pytest.mark.parametrize(
    ("prompt", "chars_per_token", "expected"),
    [
        ("", 4, 0),
        ("abcd", 4, 1),
        ("abcde", 4, 2),
        ("x" * 40, 4, 10),
        ("abc", 1.5, 2),
        ([5, 6, 7], 4, 3),
    ],
)
def test_count_tokens(prompt: str | list[int], chars_per_token: float, expected: int) -> None:
    assert count_tokens(prompt, chars_per_token) == expected


def test_block_hashes_cover_full_blocks_only() -> None:
    # block of 2 tokens * 4 chars = 8 chars
    assert len(block_hashes("a" * 23, block_size=2, chars_per_token=4)) == 2
    assert len(block_hashes("a" * 24, block_size=2, chars_per_token=4)) == 3
    assert len(block_hashes(list(range(7)), block_size=2, chars_per_token=4)) == 3


def test_block_hashes_are_a_chain() -> None:
    base = block_hashes("AAAAAAAABBBBBBBB", block_size=2, chars_per_token=4)
    same_first = block_hashes("AAAAAAAACCCCCCCC", block_size=2, chars_per_token=4)
    other_first = block_hashes("ZZZZZZZZBBBBBBBB", block_size=2, chars_per_token=4)
    assert base[0] == same_first[0]
    assert base[1] != same_first[1]
    # same second block but a different first one: the chain makes it differ
    assert base[1] != other_first[1]
    assert (
        block_hashes([1, 2, 3, 4], block_size=2, chars_per_token=4)[0]
        == (block_hashes([1, 2, 9, 9], block_size=2, chars_per_token=4)[0])
    )


def test_prefix_cache_matches_leading_blocks_only() -> None:
    cache = PrefixCache(capacity_blocks=10)
    cache.insert([1, 2, 3])
    assert cache.match([1, 2, 3, 4]) == 3
    assert cache.match([1, 9, 3]) == 1  # the chain stops at the first miss
    assert cache.match([9, 1, 2]) == 0


def test_prefix_cache_evicts_least_recently_used() -> None:
    cache = PrefixCache(capacity_blocks=2)
    cache.insert([1, 2])
    assert cache.match([1]) == 1  # refreshes 1: now 2 is the oldest
    cache.insert([3])
    assert 2 not in cache
    assert 1 in cache
    assert 3 in cache
    assert len(cache) == 2


def test_prefix_cache_of_zero_capacity_caches_nothing() -> None:
    cache = PrefixCache(capacity_blocks=0)
    cache.insert([1, 2])
    assert cache.match([1, 2]) == 0


@pytest.mark.parametrize(
    ("hits", "prompt_tokens", "expected"), [(0, 100, 0), (2, 100, 32), (7, 100, 99), (1, 1, 0)]
)
def test_cached_tokens_always_leave_one_to_compute(
    hits: int, prompt_tokens: int, expected: int
) -> None:
    assert cached_tokens(hits, block_size=16, prompt_tokens=prompt_tokens) == expected


def test_kv_budget_admission() -> None:
    kv = KvBudget(capacity_tokens=100)
    assert kv.fits(100)
    assert not kv.fits(101)
    kv.reserve(60)
    assert kv.usage == pytest.approx(0.6)
    assert not kv.fits(41)
    assert kv.fits(40)
    kv.release(60)
    assert kv.usage == 0.0
    kv.release(5)  # never negative
    assert kv.used_tokens == 0


def test_rates() -> None:
    assert prefill_seconds(8000, 8000) == pytest.approx(1.0)
    assert prefill_seconds(0, 8000) == 0.0
    assert decode_seconds(tokens_per_s=40, slowdown=0.04, running=1) == pytest.approx(0.025)
    assert decode_seconds(tokens_per_s=40, slowdown=0.04, running=11) == pytest.approx(1.4 / 40)
    assert decode_seconds(tokens_per_s=40, slowdown=0.04, running=0) == pytest.approx(0.025)


def test_plan_step_decodes_first_then_chunks_prefills_in_order() -> None:
    plan = plan_step(decode_seqs=3, prefill_left=[500, 300, 40], max_batched_tokens=512)
    assert plan == StepPlan(decode_seqs=3, chunks=(500, 9, 0))
    assert plan.prefill_tokens == 509
    roomy = plan_step(decode_seqs=0, prefill_left=[500, 0, 12], max_batched_tokens=2048)
    assert roomy.chunks == (500, 0, 12)
    full = plan_step(decode_seqs=4, prefill_left=[10], max_batched_tokens=4)
    assert full.chunks == (0,)


def test_step_seconds_adds_the_prefill_to_the_decode() -> None:
    rates = {"prefill_tokens_per_s": 4000.0, "decode_tokens_per_s": 40.0, "slowdown": 0.04}
    decode_only = StepPlan(decode_seqs=11, chunks=())
    assert step_seconds(decode_only, **rates) == pytest.approx(1.4 / 40)
    prefill_only = StepPlan(decode_seqs=0, chunks=(2000,))
    assert step_seconds(prefill_only, **rates) == pytest.approx(0.5)
    mixed = StepPlan(decode_seqs=1, chunks=(1000, 1000))
    assert step_seconds(mixed, **rates) == pytest.approx(0.025 + 0.5)
    overhead = {**rates, "prefill_overhead_s": 0.3}
    assert step_seconds(mixed, **overhead) == pytest.approx(0.025 + 0.3 + 0.5)
    assert step_seconds(decode_only, **overhead) == pytest.approx(1.4 / 40)  # no prefill, none


def test_a_sequence_alone_takes_as_long_as_in_the_independent_model() -> None:
    rates = {"prefill_tokens_per_s": 4000.0, "decode_tokens_per_s": 40.0, "slowdown": 0.04}
    left, elapsed = 5000, 0.0
    while left:
        plan = plan_step(decode_seqs=0, prefill_left=[left], max_batched_tokens=2048)
        elapsed += step_seconds(plan, **rates)
        left -= plan.chunks[0]
    assert elapsed == pytest.approx(prefill_seconds(5000, 4000))


def test_jitter_factor_is_bounded_and_seeded() -> None:
    a = [jitter_factor(random.Random(3), 0.2) for _ in range(3)]
    rng = random.Random(5)
    values = [jitter_factor(rng, 0.2) for _ in range(500)]
    assert all(0.8 <= v <= 1.2 for v in values)
    assert max(values) > 1.1
    assert min(values) < 0.9
    assert a[0] == a[1] == a[2]
    assert jitter_factor(rng, 0.0) == 1.0


def test_step_noise_is_a_seeded_lognormal_of_median_one() -> None:
    rng = random.Random(7)
    factors = sorted(step_noise_factor(rng, 0.35) for _ in range(4000))
    p50, p95 = factors[2000], factors[3800]
    assert p50 == pytest.approx(1.0, abs=0.03)
    assert math.log(p95 / p50) / Z95 == pytest.approx(0.35, abs=0.02)
    assert all(f > 0 for f in factors)
    again = random.Random(7)
    assert [step_noise_factor(again, 0.35) for _ in range(3)] == [
        step_noise_factor(r, 0.35) for r in [random.Random(7)] for _ in range(3)
    ]
    assert step_noise_factor(rng, 0.0) == 1.0  # off: every step lasts the model's time


def test_output_tokens_are_deterministic_and_prefix_consistent() -> None:
    digest = describe_prompt("m", "hello", block_size=16, chars_per_token=4).digest
    ten = output_tokens(0, digest, 10)
    assert ten == output_tokens(0, digest, 10)
    assert output_tokens(0, digest, 4) == ten[:4]
    assert output_tokens(1, digest, 10) != ten
    assert ten[0] in VOCABULARY
    assert all(t.startswith(" ") and t[1:] in VOCABULARY for t in ten[1:])


def test_describe_prompt_digest_depends_on_model_and_prompt() -> None:
    one = describe_prompt("m", "hello", block_size=16, chars_per_token=4)
    assert one.digest == describe_prompt("m", "hello", block_size=16, chars_per_token=4).digest
    assert one.digest != describe_prompt("n", "hello", block_size=16, chars_per_token=4).digest
    assert one.digest != describe_prompt("m", [1, 2], block_size=16, chars_per_token=4).digest
    assert one.tokens == 2


def test_embeddings_are_unit_vectors_and_deterministic() -> None:
    a = embed("hello", 64)
    assert len(a) == 64
    assert math.fsum(v * v for v in a) == pytest.approx(1.0)
    assert embed("hello", 64) == a
    assert embed("hello!", 64) != a
    assert embed([1, 2, 3], 8) != embed([1, 2, 4], 8)
    decoded = struct.unpack("<64f", base64.b64decode(encode_base64(a)))
    assert decoded == pytest.approx(a, abs=1e-6)


def test_split_inputs() -> None:
    assert split_inputs("a") == ["a"]
    assert split_inputs(["a", "b"]) == ["a", "b"]
    assert split_inputs([1, 2]) == [[1, 2]]
    assert split_inputs([[1], [2, 3]]) == [[1], [2, 3]]
    assert split_inputs([]) == []


def test_one_two_five_buckets() -> None:
    assert one_two_five_buckets(100) == (1, 2, 5, 10, 20, 50, 100)
    assert one_two_five_buckets(60) == (1, 2, 5, 10, 20, 50)
